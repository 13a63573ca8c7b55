"""The demo's last step: greedy short answers on the held-out split, accuracy against chance.

python examples/demo_eval.py MODEL_DIR QUESTIONS.jsonl [--limit N]
"""

import argparse
import json

from pipelines.evaluate import evaluate_questions


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model_dir")
    parser.add_argument("questions")
    parser.add_argument("--limit", type=int, default=None)
    args = parser.parse_args()
    report = evaluate_questions(args.model_dir, args.questions, limit=args.limit)
    baselines = report.get("baselines", {})
    per_type = ", ".join(f"{t} {a:.0%}" for t, a in report["by_type"].items())
    print(json.dumps(report["examples"][:3], indent=1))
    print(
        f"eval: accuracy {report['accuracy']:.1%} on {report['n']} held-out questions ({per_type}); "
        f"chance {baselines.get('chance', float('nan')):.1%}, "
        f"majority answer {baselines.get('majority', float('nan')):.1%}"
    )


if __name__ == "__main__":
    main()
