"""Crash figures: `mnemo chat` on the embedded stores SIGKILLed at random points.

    .venv/bin/python -m bench.crash --kills 30 --forget-rounds 20 [--seed N]

Progress on stderr; the last stdout line is JSON: kills, acknowledged lines, lost, unanswered
after restart, forget rounds, forgotten lines that came back."""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
import tempfile
from pathlib import Path

os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")

from tests.killing import exported, run_forget_rounds, run_kill_rounds


def _env(data_dir: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MNEMO_", "TELEGRAM_", "DISCORD_", "SLACK_"))}
    env.pop("MONGODB_URI", None)  # the embedded default, inside the killed process
    env.pop("CHROMA_URL", None)
    env.update(MNEMO_DATA_DIR=str(data_dir), PYTHONUNBUFFERED="1")
    return env


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--kills", type=int, default=30)
    parser.add_argument("--forget-rounds", type=int, default=20)
    parser.add_argument("--seed", type=int, default=random.randrange(10**6))
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="mnemo-crash-") as root:
        kill_dir, forget_dir = Path(root) / "kill", Path(root) / "forget"
        env = _env(kill_dir)
        figures = run_kill_rounds(env, args.kills, args.seed)
        messages = exported(env, "kim", kill_dir)
        stored = {doc["text"] for doc in messages}
        lost = [text for text in figures.acknowledged if text not in stored]
        unanswered = [doc["text"] for doc in messages if doc["text"] != "/export" and not doc.get("answered")]
        forget = run_forget_rounds(_env(forget_dir), forget_dir, args.forget_rounds, args.seed)
    result = {
        "seed": args.seed, "kills": figures.kills, "acknowledged": len(figures.acknowledged), "lost": len(lost),
        "stored_unanswered_after_restart": len(unanswered), "forget_rounds": forget.rounds,
        "forgotten": len(forget.forgotten), "forgotten_back": len(forget.back),
    }
    print(json.dumps(result))
    return 0 if not lost and not unanswered and not forget.back else 1


if __name__ == "__main__":
    sys.exit(main())
