"""Load test on loopback: many conversations at once through several `mnemo run` workers.

Production shape, all on 127.0.0.1: MongoDB as its own server process (SecantusDB daemon, or
MNEMO_TEST_MONGODB_URI), a Chroma server (`chroma run`), N workers in Slack HTTP mode behind a
round-robin "load balancer" (each event goes to the next worker), a loopback Slack Web API and
a loopback model. Every conversation is a DM whose person sends M messages, one every GAP
seconds; every message must be answered.

Checks: nothing lost (every message answered), nothing answered twice, replies in each
conversation in the order its messages were sent. Prints throughput and latency (event POSTed
-> reply received by Slack; it includes Slack's one-message-per-second pacing per channel).

    python bench/load.py                       # 50 conversations x 20 messages, 2 workers
    python bench/load.py --conversations 10 --messages 5 --workers 1
    python bench/load.py --local-embeddings    # embed with the bundled MiniLM instead of the fake model

Bounded: at most conversations x messages events, and --timeout seconds for the whole run.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import re
import signal
import statistics
import sys
import tempfile
import threading
import time
import urllib.request
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")

from tests.fakes.cluster import StoreServers, Worker, worker_env
from tests.fakes.llm import FakeLLM
from tests.fakes.slack import FakeSlack, channel_message, event_callback, sign

SIGNING_SECRET = "load-test-signing-secret"
# In every message, so a test can grep the workers' logs for message content.
CONTENT_MARKER = "pelican-7731"


@dataclass
class LoadResult:
    sent: int
    answered: int
    duplicates: int
    out_of_order: list[str]
    lost: list[str]
    seconds: float
    latencies: list[float] = field(default_factory=list)

    @property
    def throughput(self) -> float:
        return self.answered / self.seconds if self.seconds else 0.0

    def percentile(self, q: float) -> float:
        if not self.latencies:
            return float("nan")
        ordered = sorted(self.latencies)
        return ordered[min(len(ordered) - 1, int(q * len(ordered)))]

    def summary(self) -> str:
        return (
            f"messages sent {self.sent}, answered {self.answered}, lost {len(self.lost)}, "
            f"answered twice {self.duplicates}, conversations out of order {len(self.out_of_order)}\n"
            f"wall time {self.seconds:.1f} s, throughput {self.throughput:.1f} answered messages/s\n"
            f"latency (event -> reply at Slack): p50 {self.percentile(0.50):.2f} s, "
            f"p95 {self.percentile(0.95):.2f} s, max {max(self.latencies, default=float('nan')):.2f} s, "
            f"mean {statistics.fmean(self.latencies) if self.latencies else float('nan'):.2f} s"
        )


def mongodb_commands(worker_urls: list[str]) -> dict[str, int]:
    """MongoDB commands the workers have sent so far, by command (their /metrics)."""
    total: dict[str, int] = {}
    for url in worker_urls:
        with urllib.request.urlopen(f"{url}/metrics", timeout=30) as response:
            text = response.read().decode()
        for name, value in re.findall(r'^mnemo_mongodb_commands\{command="(\w+)"\} (\S+)$', text, re.MULTILINE):
            total[name] = total.get(name, 0) + int(float(value))
    return total


def post_event(url: str, event: dict[str, Any]) -> int:
    body = json.dumps(event_callback(event))
    headers = {"Content-Type": "application/json", **sign(SIGNING_SECRET, body)}
    request = urllib.request.Request(f"{url}/slack/events", data=body.encode(), headers=headers, method="POST")
    with urllib.request.urlopen(request, timeout=30) as response:
        return int(response.status)


def slack_env(fake: FakeSlack) -> dict[str, str]:
    return {"SLACK_BOT_TOKEN": fake.bot_token, "SLACK_SIGNING_SECRET": SIGNING_SECRET,
            "SLACK_API_BASE": fake.api_base}


def drive(
    fake: FakeSlack,
    worker_urls: list[str],
    conversations: int,
    messages: int,
    gap_s: float = 1.0,
    timeout_s: float = 300.0,
) -> LoadResult:
    """Send `conversations` x `messages` DM events round-robin over the workers and wait for
    every answer (or `timeout_s`)."""
    run = uuid.uuid4().hex[:6].upper()
    channels = [f"D{run}{i:03d}" for i in range(conversations)]
    for i, channel in enumerate(channels):
        fake.add_user(f"U{run}{i:03d}", f"Person {i}")
    sent_at: dict[str, float] = {}  # message ts -> when its event was POSTed
    order: dict[str, list[str]] = {c: [] for c in channels}  # channel -> message ts in sending order
    lock = threading.Lock()
    balancer = itertools.cycle(worker_urls)
    start = time.monotonic()
    posts_before = len(fake.posts())

    def converse(index: int) -> None:
        channel, user = channels[index], f"U{run}{index:03d}"
        # Start the conversations spread over one gap, as people do.
        time.sleep(gap_s * index / max(conversations, 1))
        for n in range(messages):
            event = channel_message(channel, user, f"note {n} from person {index}: the shelf code is "
                                                   f"{CONTENT_MARKER}-{index}-{n}. What was note {n}?")
            with lock:
                url = next(balancer)
                sent_at[event["ts"]] = time.monotonic()
                order[channel].append(event["ts"])
            for _ in range(50):
                try:
                    if post_event(url, event) == 200:
                        break
                except OSError:
                    pass
                time.sleep(0.2)  # a worker restarting or draining: Slack retries, so do we
            time.sleep(gap_s)

    with ThreadPoolExecutor(max_workers=conversations) as pool:
        list(pool.map(converse, range(conversations)))

    expected = conversations * messages
    deadline = start + timeout_s
    ours = set(channels)
    replies: list[Any] = []
    while time.monotonic() < deadline:
        replies = [c for c in fake.posts()[posts_before:] if c.args.get("channel") in ours]
        if len({c.args.get("thread_ts") for c in replies}) >= expected:
            break
        time.sleep(0.1)
    time.sleep(min(2.0, max(0.0, deadline - time.monotonic())))  # let any duplicate show itself
    replies = [c for c in fake.posts()[posts_before:] if c.args.get("channel") in ours]
    elapsed = max(c.at for c in replies) - start if replies else time.monotonic() - start

    first_reply: dict[str, float] = {}
    duplicates = 0
    answered_order: dict[str, list[str]] = {c: [] for c in channels}
    for call in replies:
        ts = str(call.args.get("thread_ts"))
        if ts in first_reply:
            duplicates += 1
            continue
        first_reply[ts] = call.at
        answered_order[str(call.args["channel"])].append(ts)
    lost = [ts for ts in sent_at if ts not in first_reply]
    out_of_order = [c for c in channels if answered_order[c] != [t for t in order[c] if t in first_reply]]
    latencies = [first_reply[ts] - sent_at[ts] for ts in first_reply if ts in sent_at]
    return LoadResult(expected, len(first_reply), duplicates, out_of_order, lost, elapsed, latencies)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--conversations", type=int, default=50)
    parser.add_argument("--messages", type=int, default=20)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--gap", type=float, default=1.0, help="seconds between a person's messages")
    parser.add_argument("--timeout", type=float, default=600.0, help="bound for the whole run, seconds")
    parser.add_argument("--local-embeddings", action="store_true",
                        help="the bundled MiniLM on the CPU (default: the loopback model's embeddings)")
    parser.add_argument("--standalone", action="store_true",
                        help="MongoDB without change streams (waiting turns polled); default: a "
                             "single-node replica set, whose change streams wake waiting turns")
    args = parser.parse_args(argv)
    if args.conversations * args.messages > 5000:
        parser.error("at most 5000 messages per run")

    root = Path(tempfile.mkdtemp(prefix="mnemo-load-"))
    print(f"cluster under {root}", flush=True)
    stores = StoreServers(root / "stores", standalone=args.standalone)
    fake, llm = FakeSlack().start(), FakeLLM().start()
    extra = {**slack_env(fake), **llm.env(), "MNEMO_LOG_LEVEL": "WARNING"}
    if not args.local_embeddings:
        extra["MNEMO_EMBEDDING_MODEL"] = "openai/fake-embedding"
    env = worker_env(stores, root / "data", "load", **extra)
    workers = [Worker(f"worker{i}", env, root).start() for i in range(args.workers)]
    try:
        for worker in workers:
            worker.wait_healthy(180)
        print(f"{args.workers} workers up; sending {args.conversations} conversations x {args.messages} "
              f"messages, one every {args.gap:g} s per conversation", flush=True)
        urls = [w.url for w in workers]
        before = mongodb_commands(urls)
        result = drive(fake, urls, args.conversations, args.messages, args.gap, args.timeout)
        after = mongodb_commands(urls)
        commands = {name: count - before.get(name, 0) for name, count in after.items() if count > before.get(name, 0)}
        sent = sum(commands.values())
        per_message = sent / result.answered if result.answered else float("nan")
        print(result.summary())
        top = ", ".join(f"{name} {count}" for name, count in sorted(commands.items(), key=lambda kv: -kv[1])[:6])
        print(f"MongoDB commands {sent} ({per_message:.1f} per answered message): {top}")
        print(json.dumps({
            "workers": args.workers, "conversations": args.conversations, "messages": args.messages,
            "offered_per_s": round(args.conversations / args.gap, 1), "answered": result.answered,
            "lost": len(result.lost), "duplicates": result.duplicates, "out_of_order": len(result.out_of_order),
            "throughput_per_s": round(result.throughput, 2), "p50_s": round(result.percentile(0.5), 2),
            "p95_s": round(result.percentile(0.95), 2), "mongodb_commands": sent,
            "mongodb_commands_per_answer": round(per_message, 1), "mongodb_commands_by_name": commands,
        }))
        return 0 if not result.lost and not result.duplicates and not result.out_of_order else 1
    finally:
        for worker in workers:
            worker.stop()
        fake.stop()
        llm.stop()
        stores.stop()


if __name__ == "__main__":
    # A SIGTERM (e.g. `timeout`) unwinds through main's `finally`, so no worker or store
    # process outlives the bench.
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))
    sys.exit(main())
