"""``cmat transfer-study``: the robustness-transfer study end to end in one command.

1. **Sources.** Two plain networks trained on the source task (``at-individual`` runs of the
   sequence's first ``source_task + 1`` tasks): objective ``standard`` and the configuration's
   robust objective (``pgd`` by default; ``--objective crown-ibp`` makes a certified study, every
   network trained with the preset's ``certified:`` recipe). They are
   ordinary run directories under ``OUT/sources/`` (a finished one with the same configuration
   is reused, as ``cmat bench`` does).
2. **Cells.** On the target task, for each source: ``linear``, ``tl-K``, ``finetune`` and ``lwf``
   (:mod:`cmat.transfer`), each with target objective ``standard`` and the robust one; plus ``scratch``
   with both objectives (``source_objective`` = ``none``). Every cell is evaluated by the
   harness (:func:`cmat.evaluate.evaluate_task`: clean, the configured attacks and ``worst``,
   all on the same images), certified at the run's ε with CROWN (the tightest bound cmat has;
   ``certified`` counts images proven for every point of the ball), and bracketed per sample
   by critical-ε bisection (certified lower end, PGD upper end; VERONA's CSV columns) on the
   first ``verify_samples`` correctly classified evaluated images. Cost: training seconds and
   ``grad_evals`` = forward+backward passes per image spent on the target, attack steps
   included. A finished cell (``cells/<name>/cell.json`` with the same key) is reused; one whose
   ``cell.json`` is truncated, garbage or of another schema is named in one line and trains again.
3. **Outputs.** ``study.csv`` (the columns in :data:`CSV_COLUMNS`), ``study.json`` (everything,
   with n, 95% intervals, ratios against scratch training with the robust objective, exact
   McNemar tests against it, and the source effect: robust vs standard source per strategy and
   target objective on the robust column — ``certified`` in a certified study), ``study.md``,
   ``critical_eps.csv`` and the plots ``pareto.png`` (robust accuracy against cost, Pareto
   front), ``bars.png`` (grouped per strategy) and ``ecdf.png`` (critical ε per strategy).

Sources and cells are jobs of the one scheduler (:func:`cmat.launch.launch`), as a bench's runs
are: in this process, in ``jobs`` worker processes (cores // jobs threads each) or as SLURM jobs,
each cell after its source; a source is an ordinary run job, so a killed one resumes. The study
holds the lock of ``OUT`` and, for its workers, of every source and cell directory
(:mod:`cmat.rundir`); through SLURM each job holds its own.

Modules: ``plan`` (cells, keys, reuse), ``cells`` (a cell's job, training, evaluation and
verification), ``study`` (plan the jobs, launch, collect), ``analysis`` (summary, tables, plots).
"""
from cmat.transfer_study.analysis import study_markdown, summarize_study, write_study  # noqa: F401
from cmat.transfer_study.plan import ACCURACY_COLUMNS, CSV_COLUMNS, Cell, plan  # noqa: F401
from cmat.transfer_study.study import run_study  # noqa: F401
