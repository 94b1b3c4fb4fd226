"""The report: one module per section (figure, table and markdown piece), and the assembler."""
