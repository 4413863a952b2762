"""``toy-2task``: deterministic synthetic images on which adversarial training visibly matters.

Every image (3×16×16, 4 classes per task, no files, independent of the data root; the run seed
only picks the validation split) is built from fixed seeds as::

    x = clip01(0.5 + noise + template[y] + patch + distractors),   stored as uint8

- **non-robust feature** -- ``template[y]``: a dense random ±``TEMPLATE_AMPLITUDE`` (0.06)
  pattern over all 768 values, one per class and task. It is *always* right, but ε = 8/255
  ≈ 0.031 per pixel removes over half of its evidence, so a classifier that leans on it breaks.
- **robust feature** -- ``patch``: a 4×4 square of amplitude ``PATCH_AMPLITUDE`` (0.4; bright
  in task 0, dark in task 1) in a class-specific cell of the 4×4 grid of cells; no ε = 8/255
  perturbation can erase or forge it. It is *wrong* for ``CONFLICT`` (5%) of the images (drawn
  in another class's cell), train and test alike -- Tsipras et al.'s "robustness may be at
  odds with accuracy" construction.
- noise: i.i.d. Gaussian, σ = ``NOISE`` (0.08).
- **distractors**: every image of task t also carries, at random and independent of its label,
  one class template and one patch of the *other* task. Learning task 1 therefore teaches a
  shared backbone to ignore exactly what task 0 relies on, so sequential fine-tuning forgets
  task 0 (the at-finetune baseline shows forgetting here).

Consequences (the reason this sequence exists): standard training fits the always-right
template (the patch is wrong 5% of the time) -- high clean accuracy, near-zero PGD accuracy;
PGD adversarial training cannot use the template and learns the patch -- about 95% clean and
PGD accuracy (the 5% of conflicting images cap both). See the measured numbers below.

Measured (``cmat.nn.MultiHeadNet("smallcnn")``, width 1, Adam 1e-3, batch 128, 5 epochs on
task 0's 1080 training images; test = 800 images then; PGD ε = 8/255, α = 2/255, 10 steps,
random start, eval mode; AT = PGD-7 training): standard training clean 0.92, PGD-10 0.006;
AT clean 0.94, PGD-10 0.94, PGD-40 0.94; AT fine-tuned on task 1 afterwards: task 0 clean falls
to 0.25 (forgetting). With cmat's toy preset (SGD, width 0.5, PGD-5 training, 4 epochs) the
at-finetune baseline goes from 0.94 to 0.58 clean on task 0 after task 1.
"""
from __future__ import annotations

import numpy as np

from cmat.tasks.build import make_task

NUM_TASKS = 2
NUM_CLASSES = 4
INPUT_SHAPE = (3, 16, 16)
AUGMENT = None  # a crop would move the class-specific patch cells
TRAIN_PER_CLASS = 300  # before the validation split
TEST_PER_CLASS = 100
BACKGROUND = 0.5
NOISE = 0.08
TEMPLATE_AMPLITUDE = 0.06
PATCH_AMPLITUDE = 0.4
PATCH_SIZE = 4
CONFLICT = 0.05
SEED = 20250611  # the data's fixed seed


def _structure() -> tuple:
    """Templates ``(task, class, C, H, W)`` in {-1, +1}, patch cells ``(task, class) -> (row, col)``
    (disjoint across tasks) and each task's patch sign (+1 bright, -1 dark)."""
    rng = np.random.default_rng([SEED, 0])
    templates = rng.choice(np.array([-1.0, 1.0]), size=(NUM_TASKS, NUM_CLASSES) + INPUT_SHAPE)
    side = INPUT_SHAPE[1] // PATCH_SIZE
    cells = rng.permutation(side * side)[:NUM_TASKS * NUM_CLASSES].reshape(NUM_TASKS, NUM_CLASSES)
    corners = np.stack([cells // side, cells % side], axis=-1) * PATCH_SIZE
    signs = np.array([1.0 if t % 2 == 0 else -1.0 for t in range(NUM_TASKS)])
    return templates, corners, signs


def _add_patches(x: np.ndarray, corner_of: np.ndarray, amplitude: float) -> None:
    """Add ``amplitude`` to the ``PATCH_SIZE`` square at ``corner_of[i]`` of every image ``x[i]``."""
    rows = corner_of[:, 0, None] + np.arange(PATCH_SIZE)          # N × P
    cols = corner_of[:, 1, None] + np.arange(PATCH_SIZE)
    n = np.arange(len(x))[:, None, None]
    x.transpose(0, 2, 3, 1)[n, rows[:, :, None], cols[:, None, :]] += amplitude


def generate(task: int, split: str) -> tuple:
    """Task ``task``'s ``"train"`` or ``"test"`` images (uint8 N×3×16×16) and labels; deterministic."""
    templates, corners, signs = _structure()
    per_class = TRAIN_PER_CLASS if split == "train" else TEST_PER_CLASS
    rng = np.random.default_rng([SEED, 1 + task, 0 if split == "train" else 1])
    y = np.repeat(np.arange(NUM_CLASSES), per_class)
    n = len(y)
    x = BACKGROUND + NOISE * rng.standard_normal((n,) + INPUT_SHAPE)
    x += TEMPLATE_AMPLITUDE * templates[task, y]
    wrong = rng.random(n) < CONFLICT
    patch_class = np.where(wrong, (y + rng.integers(1, NUM_CLASSES, n)) % NUM_CLASSES, y)
    _add_patches(x, corners[task, patch_class], signs[task] * PATCH_AMPLITUDE)
    for other in range(NUM_TASKS):  # distractors: the other tasks' features, label-free
        if other != task:
            x += TEMPLATE_AMPLITUDE * templates[other, rng.integers(0, NUM_CLASSES, n)]
            _add_patches(x, corners[other, rng.integers(0, NUM_CLASSES, n)], signs[other] * PATCH_AMPLITUDE)
    images = np.rint(np.clip(x, 0.0, 1.0) * 255.0).astype(np.uint8)
    return images, y


def load_toy_2task(root, download: bool, seed: int, val_fraction: float) -> list:
    tasks = []
    for t in range(NUM_TASKS):
        classes = [f"{'ab'[t]}{k}" for k in range(NUM_CLASSES)]
        tasks.append(make_task(t, f"toy-{'ab'[t]}", classes, *generate(t, "train"), *generate(t, "test"),
                               AUGMENT, seed, val_fraction))
    return tasks
