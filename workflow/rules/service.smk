# One retriever service per run (retriever.service.enabled, docs/cluster.md): the first train or
# evaluate job that searches launches it (a background process, or its own sbatch job) and every
# other job finds it through results/.retriever/url.json. The run stops it when it ends, either way
# (Snakemake runs no hooks in dry runs, nor inside the jobs it submits: they get --no-hooks).
def stop_run_retriever():
    from research_rl.retrieval import run_service

    if run_service.enabled(CFG):
        print(f"retriever service: {run_service.stop(CFG)}")


onsuccess:
    stop_run_retriever()


onerror:
    stop_run_retriever()
