"""The paper's analyses (Sections 5.1-5.5) and the ablations, on the extracted tables; no torch."""
