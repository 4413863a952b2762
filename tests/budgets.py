"""Solver budgets the tests use, so that no verdict depends on the machine's load.

MILP checks in tests stop after ``MILP_NODES`` branch-and-bound nodes per MILP (HiGHS's
``node_limit``), with no wall-clock limit (``time_limit=None``): a node count is the same on an
idle and on a busy machine, a 10-s clock is not (a loaded CI machine ran out of it). Measured on
every MILP the suite solves: at most 24 nodes per MILP, so 10,000 leaves a 400× margin and a
check that still runs out of nodes means the encoding changed, not the machine."""
MILP_NODES = 10_000
MILP_LIMITS = {"time_limit": None, "node_limit": MILP_NODES}
