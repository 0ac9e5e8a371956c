"""``python -m pacing.evaluation``: the same command as ``pacing evaluate``."""

from pacing.evaluation.command import evaluate

if __name__ == "__main__":
    evaluate(prog_name="python -m pacing.evaluation")
