"""Production shape, black box: MongoDB and Chroma as their own server processes, two
`mnemo run` workers (subprocesses configured by environment only) in Slack HTTP mode, a
loopback Slack Web API and a loopback model. Assertions are on what reaches Slack (answered
once, in order, after crashes) and on what the workers expose (/healthz, /metrics, logs).

The deploy files are checked too: Debian's docker-compose parses the compose file.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from pymongo import MongoClient

from bench.load import CONTENT_MARKER, SIGNING_SECRET, drive, post_event, slack_env
from tests.conftest import REPO
from tests.fakes.cluster import StoreServers, Worker, http_get, wait_for, worker_env
from tests.fakes.llm import FakeLLM
from tests.fakes.slack import FakeSlack, channel_message, event_callback, sign

LEASE_S = 4  # MNEMO_LEASE_SECONDS: short, so crash recovery fits in a test
DRAIN_S = 3  # MNEMO_DRAIN_SECONDS


@dataclass
class Cluster:
    stores: StoreServers
    slack: FakeSlack
    llm: FakeLLM
    workers: dict[str, Worker]
    db: Any  # the workers' MongoDB database (pymongo, read-only use)

    def replies_to(self, channel: str, ts: str) -> list[str]:
        return [str(c.args.get("text")) for c in self.slack.posts()
                if c.args.get("channel") == channel and c.args.get("thread_ts") == ts]

    def model_calls_about(self, words: str) -> int:
        return sum(words in json.dumps(r.get("messages", [])) for r in self.llm.answer_requests())

    def stored(self, channel: str, ts: str) -> dict[str, Any] | None:
        return self.db.messages.find_one({"key": f"slack:{channel}:{ts}"})


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    root = tmp_path_factory.mktemp("cluster")
    stores = StoreServers(root / "stores")
    slack, llm = FakeSlack().start(), FakeLLM().start()
    db_name = "deploy"
    env = worker_env(
        stores, root / "data", db_name, **slack_env(slack), **llm.env(),
        # The loopback model also serves embeddings: workers start in seconds, not minutes.
        MNEMO_EMBEDDING_MODEL="openai/fake-embedding",
        MNEMO_LEASE_SECONDS=str(LEASE_S), MNEMO_DRAIN_SECONDS=str(DRAIN_S),
    )
    workers = {name: Worker(name, env, root).start() for name in ("w1", "w2")}
    client: Any = MongoClient(stores.mongo_uri, tz_aware=True)
    try:
        for worker in workers.values():
            worker.wait_healthy(180)
        yield Cluster(stores, slack, llm, workers, client[db_name])
    finally:
        for worker in workers.values():
            worker.stop()
        client.close()
        slack.stop()
        llm.stop()
        stores.stop()


def dm(cluster: Cluster, tag: str, text: str) -> dict[str, Any]:
    """A DM event from a new person (own channel), carrying the content marker."""
    user, channel = f"U{tag}", f"D{tag}"
    cluster.slack.add_user(user, f"Person {tag}")
    return channel_message(channel, user, f"{text} ({CONTENT_MARKER})")


def wait_answered(cluster: Cluster, event: dict[str, Any], timeout: float = 40) -> list[str]:
    return wait_for(lambda: cluster.replies_to(event["channel"], event["ts"]), timeout,
                    f"an answer to {event['ts']}", interval=0.1)


# -- the deploy files -------------------------------------------------------------------


def test_compose_file_parses_with_debians_docker_compose(tmp_path: Path) -> None:
    compose = shutil.which("docker-compose")
    if compose is None:
        pytest.skip("docker-compose is not installed (apt-get install -y docker-compose)")
    # `config` resolves env_file, so give it the example as the .env next to the file.
    deploy = tmp_path / "deploy"
    deploy.mkdir()
    shutil.copy(REPO / "deploy" / "docker-compose.yml", deploy / "docker-compose.yml")
    shutil.copy(REPO / "deploy" / ".env.example", deploy / ".env")
    result = subprocess.run([compose, "-f", str(deploy / "docker-compose.yml"), "config"],
                            capture_output=True, text=True, timeout=60, check=False)
    assert result.returncode == 0, result.stderr
    assert "condition: service_healthy" in result.stdout
    for service in ("mongo:", "chroma:", "bot:"):
        assert service in result.stdout


def test_env_example_documents_every_setting() -> None:
    example = (REPO / "deploy" / ".env.example").read_text()
    documented = set(re.findall(r"^([A-Z][A-Z0-9_]+)=", example, re.MULTILINE))
    from bot.config import Settings

    aliases = {str(f.validation_alias) for f in Settings.model_fields.values()}
    assert aliases - documented == set()


# -- one worker's surface: health, metrics ---------------------------------------------------


def test_healthz_and_metrics_report_stores_and_traffic(cluster: Cluster) -> None:
    w1 = cluster.workers["w1"]
    status, body = http_get(f"{w1.url}/healthz")
    assert status == 200
    assert json.loads(body) == {"status": "ok", "mongodb": "ok", "chroma": "ok"}

    event = dm(cluster, "HEALTH1", "I keep the spare keys under the blue flowerpot")
    assert post_event(w1.url, event) == 200
    wait_answered(cluster, event)
    # The time per message is recorded once its processing is written back, just after the reply.
    wait_for(lambda: 'mnemo_message_seconds_count{platform="slack"}' in w1.metrics(), 10, "the message timed")
    metrics = w1.metrics()
    series = dict(line.rsplit(" ", 1) for line in metrics.splitlines() if line and not line.startswith("#"))
    assert float(series['mnemo_messages_in_total{platform="slack"}']) >= 1
    assert float(series['mnemo_replies_out_total{platform="slack"}']) >= 1
    assert float(series['mnemo_message_seconds_count{platform="slack"}']) >= 1
    assert float(series['mnemo_model_seconds_count{mode="fast"}']) >= 1
    for name in ("mnemo_model_errors_total", "mnemo_rate_limit_waits_total", "mnemo_queue_depth",
                 "mnemo_duplicates_total", "mnemo_recovered_total"):
        assert name in series, name
    assert "# TYPE mnemo_message_seconds histogram" in metrics
    assert 'mnemo_message_seconds_bucket{platform="slack",le="+Inf"}' in metrics


# -- scale-out: answered once ----------------------------------------------------------------


def test_same_event_delivered_to_both_workers_is_answered_once(cluster: Cluster) -> None:
    event = dm(cluster, "TWICE1", "Where do I keep the spare keys?")
    body = json.dumps(event_callback(event))
    w1, w2 = cluster.workers["w1"], cluster.workers["w2"]

    def deliver(url: str, retry: int) -> int:
        import urllib.request

        headers = {"Content-Type": "application/json", **sign(SIGNING_SECRET, body)}
        if retry:
            headers |= {"X-Slack-Retry-Num": str(retry), "X-Slack-Retry-Reason": "http_timeout"}
        request = urllib.request.Request(f"{url}/slack/events", data=body.encode(), headers=headers, method="POST")
        with urllib.request.urlopen(request, timeout=30) as response:
            return int(response.status)

    # The original and Slack's retries, landing on both workers at once.
    with ThreadPoolExecutor(4) as pool:
        codes = list(pool.map(deliver, [w1.url, w2.url, w2.url, w1.url], [0, 1, 2, 3]))
    assert codes == [200, 200, 200, 200]
    wait_answered(cluster, event)
    time.sleep(2.5)  # room for a second answer to show up
    assert len(cluster.replies_to(event["channel"], event["ts"])) == 1
    assert cluster.model_calls_about("Where do I keep the spare keys?") == 1
    assert cluster.db.messages.count_documents({"key": f"slack:{event['channel']}:{event['ts']}"}) == 1


def test_load_over_two_workers_loses_nothing_and_keeps_order(cluster: Cluster) -> None:
    urls = [w.url for w in cluster.workers.values()]
    result = drive(cluster.slack, urls, conversations=8, messages=5, gap_s=0.3, timeout_s=60)
    print(result.summary())
    assert result.lost == []
    assert result.duplicates == 0
    assert result.out_of_order == []
    assert result.answered == 40


# -- graceful shutdown -------------------------------------------------------------------------


def test_sigterm_drains_finishes_in_flight_and_hands_back_the_rest(cluster: Cluster) -> None:
    w1, w2 = cluster.workers["w1"], cluster.workers["w2"]
    quick = dm(cluster, "DRAIN1", "What colour is the flowerpot, quick?")
    slow = dm(cluster, "DRAIN2", "What colour is the flowerpot, slowly?")
    cluster.llm.delay_s = 1.5  # answers within the drain deadline
    assert post_event(w2.url, quick) == 200
    wait_for(lambda: cluster.model_calls_about("flowerpot, quick"), 20, "the quick question at the model")
    cluster.llm.delay_s = 60  # still thinking when the deadline passes
    assert post_event(w2.url, slow) == 200
    wait_for(lambda: cluster.model_calls_about("flowerpot, slowly"), 20, "the slow question at the model")
    cluster.llm.delay_s = 0

    w2.terminate()
    # Draining: the balancer sees /healthz fail, and webhooks are refused so Slack retries elsewhere.
    wait_for(lambda: http_get(f"{w2.url}/healthz")[0] == 503, 5, "/healthz 503 while draining", interval=0.05)
    late = dm(cluster, "DRAIN3", "Are you there?")
    assert _status_or_none(w2.url, late) == 503
    # In flight and within the deadline: answered by w2 itself.
    assert len(wait_answered(cluster, quick, timeout=10)) == 1
    assert w2.wait(DRAIN_S + 30) == 0
    assert "handed back 1 unfinished messages" in w2.logs()
    # Past the deadline: handed back, and the other worker adopts and answers it.
    wait_answered(cluster, slow, timeout=LEASE_S + 10)
    assert cluster.stored(slow["channel"], slow["ts"])["attempts"] == 2
    # The refused event, retried by Slack, reaches the remaining worker.
    assert post_event(w1.url, late) == 200
    wait_answered(cluster, late)
    time.sleep(1.5)
    for event in (quick, slow, late):
        assert len(cluster.replies_to(event["channel"], event["ts"])) == 1


def _status_or_none(url: str, event: dict[str, Any]) -> int | None:
    import urllib.error

    try:
        return post_event(url, event)
    except urllib.error.HTTPError as exc:
        return exc.code
    except OSError:
        return None


# -- crash safety ------------------------------------------------------------------------------


def test_sigkilled_worker_message_is_answered_after_restart_exactly_once(cluster: Cluster) -> None:
    w1, w2 = cluster.workers["w1"], cluster.workers["w2"]
    w2.stop()  # (stopped by the drain test already) w1 is the only worker: its restart must recover
    event = dm(cluster, "CRASH1", "Which shelf holds the tax papers?")
    cluster.llm.delay_s = 60
    assert post_event(w1.url, event) == 200
    wait_for(lambda: cluster.model_calls_about("tax papers"), 20, "the question at the model")
    w1.kill()  # mid-answer: no shutdown code runs
    cluster.llm.delay_s = 0

    stored = cluster.stored(event["channel"], event["ts"])
    assert stored is not None and stored["state"] == "processing"  # saved, pending, not lost
    assert cluster.replies_to(event["channel"], event["ts"]) == []

    w1.start()
    w1.wait_healthy(180)
    answer = wait_answered(cluster, event, timeout=LEASE_S * 3 + 20)
    time.sleep(2.5)
    assert len(cluster.replies_to(event["channel"], event["ts"])) == 1
    assert "interrupted" not in answer[0] and "went wrong" not in answer[0]
    stored = cluster.stored(event["channel"], event["ts"])
    assert stored["state"] == "done" and stored["attempts"] == 2
    assert cluster.model_calls_about("tax papers") == 2  # asked again after the crash
    assert 'mnemo_recovered_total 1' in w1.metrics()


def test_worker_killed_while_sending_is_answered_once_after_checking_what_slack_has(
    cluster: Cluster,
) -> None:
    w1 = cluster.workers["w1"]
    event = dm(cluster, "CRASH2", "Where is the ladder stored?")
    # Slack answers the reply with 429 Retry-After: the worker waits mid-send, and dies there.
    cluster.slack.retry_after = 60
    cluster.slack.rate_limit["chat.postMessage"] = 1
    assert post_event(w1.url, event) == 200
    wait_for(lambda: cluster.slack.calls_to("chat.postMessage", ok_only=False)[-1].status == 429
             if cluster.slack.calls_to("chat.postMessage", ok_only=False) else False, 30, "the reply being sent")
    assert cluster.stored(event["channel"], event["ts"])["state"] == "sending"
    w1.kill()
    cluster.slack.retry_after = 1

    # Slack lets the adopter check what was posted (mnemo_reply metadata, DESIGN.md "Recovery and
    # idempotent delivery"): nothing was, so the answer is sent once, with no apology.
    w1.start()
    w1.wait_healthy(180)
    replies = wait_answered(cluster, event, timeout=LEASE_S * 3 + 20)
    time.sleep(2.5)
    replies = cluster.replies_to(event["channel"], event["ts"])
    assert len(replies) == 1
    assert "interrupted" not in replies[0]
    assert cluster.stored(event["channel"], event["ts"])["state"] == "done"


# -- logs ----------------------------------------------------------------------------------------


def test_json_logs_never_contain_message_content(cluster: Cluster) -> None:
    logs = "".join(w.logs() for w in cluster.workers.values())
    lines = [line for line in logs.splitlines() if line.strip()]
    assert len(lines) > 10
    records = [json.loads(line) for line in lines]  # every line is one JSON object
    assert {"ts", "level", "logger", "msg"} <= set(records[0])
    assert any("adopted 1 pending messages" in r["msg"] for r in records)
    # Every message of this module carried the marker; not one log line may repeat it.
    assert CONTENT_MARKER not in logs
    for phrase in ("spare keys", "flowerpot", "tax papers", "shelf code", "ladder"):
        assert phrase not in logs
