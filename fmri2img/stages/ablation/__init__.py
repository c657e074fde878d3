"""``fmri2img ablate``: the research track's whole experimental matrix in one command.

Cells are (subject, decoder, configuration); which cells run is a config file
(``projects/imagery/configs/ablation.yaml``) plus overrides, never a copied script.

Stages per subject (each reused when its inputs are unchanged):

1. the synthetic world (only when ``data_root`` holds none and ``synthesize`` is on);
2. the trial index + beta cache (``build_index`` is a no-op on unchanged inputs);
3. the embedding set (``synthetic-truth`` or a CLIP set already in the cache);
4. one perception-only checkpoint per decoder (shared by the perception-only, adapter
   and fine-tune cells; reused when its key matches);
5. the cells: ``perception_only`` (evaluate), ``mixed`` (one model per held-out imagery
   fold, H2), ``adapter_linear`` / ``adapter_mlp`` / ``adapter_mlp_condition`` (H3) and
   ``finetune`` (H3's baseline); each evaluated on the perception and imagery test sets.

Resumable: a cell writes ``eval/<cell>/cell.json`` (its key: config, input checksums and the
code's hash) last; a rerun skips cells whose key is unchanged; ``force`` reruns all. A crash
loses only the cell in progress (every file is written atomically).

Modules: :mod:`.matrix` (config, cells, paths, keys, commands), :mod:`.cells` (the work),
:mod:`.summary` (tables and hypotheses), :mod:`.workers` (where tasks run: a local process pool
or Slurm job arrays), :mod:`.executor` (:func:`~.executor.run_ablation`).
"""
