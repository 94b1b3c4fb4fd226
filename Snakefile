# ICL as kernel regression (Han et al., TMLR 2025): the whole study from `snakemake --cores N`.
# Setup only: config and its validation, then one rule file per stage.
from snakemake.utils import min_version

min_version("9.0")


configfile: "config.yaml"


report: "report/workflow.rst"


include: "rules/common.smk"
include: "rules/data.smk"
include: "rules/models.smk"
include: "rules/encoder.smk"
include: "rules/prompts.smk"
include: "rules/extract.smk"
include: "rules/analysis.smk"
include: "rules/ablations.smk"
include: "rules/interventions.smk"
include: "rules/theory.smk"
include: "rules/report.smk"


# Rules marked `localrule: True` (the downloads, which need the network that compute nodes often
# lack, and the light report) run where snakemake itself runs on a cluster.
rule all:
    localrule: True
    input:
        paths.report(),
