# One retriever service per run (retriever.service.enabled, docs/cluster.md): the first train or
# evaluate job that searches launches it (a background process, or its own sbatch job) and every
# other job finds it through results/.retriever/url.json. The run stops it when it ends, either way;
# at its start it clears one that an earlier, killed run left dead or on another index, and reuses a
# healthy one. Snakemake runs no hooks in dry runs, nor inside the jobs it submits (--no-hooks).
def stop_run_retriever():
    from research_rl.retrieval import run_service

    if run_service.enabled(CFG):
        print(f"retriever service: {run_service.stop(CFG)}")


def clear_unusable_retriever():
    from research_rl.retrieval import run_service

    if run_service.enabled(CFG):
        cleared = run_service.clear_unusable(CFG)
        if cleared:
            print(f"retriever service left by an earlier run, {cleared}")


onstart:
    clear_unusable_retriever()


onsuccess:
    stop_run_retriever()


onerror:
    stop_run_retriever()
