"""The `robustness` stage: accuracy and mCE of a cell's models under imaging artefacts."""
