# Synthetic check of Theorem 1 (paper Appendix C, Table 3): kernel regression with the
# operator kernel vs the exact Bayesian posterior on random HMM mixtures. CPU only, numpy.
rule theory:
    output:
        table=paths.theory("table.parquet"),
        figure=paths.theory("convergence.png"),
        summary=paths.theory("summary.md"),
    params:
        paper=paper.for_captions,  # the captions' numbers (not recorded: see core/paper.py)
        theory=config["theory"],
    group:
        "analysis"
    benchmark:
        paths.benchmark("theory"),
    log:
        paths.log("theory"),
    conda:
        "../envs/cpu.yaml"
    script:
        stage("theory.study:from_snakemake")
