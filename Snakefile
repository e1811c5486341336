# tuneatlas: five studies of how transformer language models fine-tune, as one DAG.
#   snakemake --cores 2                                  toy scale (config.yaml), offline, CPU
#   snakemake --profile profiles/slurm --configfile paper.yaml      paper scale on a cluster
#   snakemake results/tables/s1_t1.parquet               one table and only what it needs
from snakemake.utils import min_version

min_version("9.0")


# config.yaml is the embedded default; --configfile replaces it instead of being merged into it
if not workflow.overwrite_configfiles:

    configfile: f"{workflow.basedir}/config.yaml"


report: "workflow/report/workflow.rst"


include: "workflow/rules/common.smk"
include: "workflow/rules/data.smk"
include: "workflow/rules/finetune.smk"
include: "workflow/rules/subsets.smk"
include: "workflow/rules/ensembles.smk"
include: "workflow/rules/fisher.smk"
include: "workflow/rules/bundles.smk"
include: "workflow/rules/pretrain.smk"
include: "workflow/rules/tables.smk"
include: "workflow/rules/tracking.smk"
include: "workflow/rules/repro.smk"


rule all:
    default_target: True
    input:
        PLAN.final_outputs(),
        report_views(),
