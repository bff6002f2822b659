"""GroupConsumer.commit's error mapping (pure logic over a stand-in for librdkafka's consumer): the
callers retry a KafkaError (broker away) but give up on a CommitFailedError (the group moved on).
A commit or close that never returns is given up on after ``call_timeout_s`` (librdkafka's synchronous
commit has no deadline of its own). And GroupConsumer.watermarks: a moving leader is asked again, other
errors are not."""

from __future__ import annotations

import logging
import threading
import time

import confluent_kafka
import pytest

from worker import kafka_io


class _Refusing:
    def __init__(self, code: int) -> None:
        self.code = code

    def commit(self, **_: object) -> None:
        raise confluent_kafka.KafkaException(confluent_kafka.KafkaError(self.code))


def _consumer(code: int) -> kafka_io.GroupConsumer:
    return _wrap(_Refusing(code))


def _wrap(fake: object, call_timeout_s: float = 5.0) -> kafka_io.GroupConsumer:
    c = object.__new__(kafka_io.GroupConsumer)
    c._c = fake
    c.call_timeout_s, c.timed_out_calls = call_timeout_s, 0
    return c


class _Silent:
    """A commit / close whose answer never comes (seen after a broker restart), until released."""

    def __init__(self) -> None:
        self.release = threading.Event()
        self.commits = 0

    def commit(self, **_: object) -> None:
        self.commits += 1
        self.release.wait()

    def close(self) -> None:
        self.release.wait()


def test_a_commit_without_answer_is_a_kafka_error_at_the_deadline() -> None:
    fake = _Silent()
    c = _wrap(fake, call_timeout_s=0.3)
    t0 = time.monotonic()
    with pytest.raises(kafka_io.KafkaError, match=r"commit did not return within 0\.3s") as info:
        c.commit({kafka_io.TopicPartition("t", 0): 5})
    assert 0.3 <= time.monotonic() - t0 < 2.0
    assert not isinstance(info.value, kafka_io.CommitFailedError)  # retried, like a broker away
    assert c.timed_out_calls == 1 and fake.commits == 1
    fake.release.set()


def test_a_commit_that_answers_in_time_returns() -> None:
    fake = _Silent()
    fake.release.set()
    c = _wrap(fake, call_timeout_s=5.0)
    c.commit({kafka_io.TopicPartition("t", 0): 5})
    assert c.timed_out_calls == 0 and fake.commits == 1


def test_a_close_without_answer_is_left_behind_with_a_warning(caplog: pytest.LogCaptureFixture) -> None:
    fake = _Silent()
    c = _wrap(fake, call_timeout_s=0.3)
    with caplog.at_level(logging.WARNING, logger="worker.kafka_io"):
        c.close()  # returns: the process can go on shutting down
    assert c.timed_out_calls == 1
    assert "close did not return" in caplog.text
    fake.release.set()


@pytest.mark.parametrize(
    "code",
    [confluent_kafka.KafkaError.ILLEGAL_GENERATION, confluent_kafka.KafkaError.UNKNOWN_MEMBER_ID,
     confluent_kafka.KafkaError.REBALANCE_IN_PROGRESS, confluent_kafka.KafkaError._ASSIGNMENT_LOST],
)
def test_group_moved_on_is_commit_failed(code: int) -> None:
    with pytest.raises(kafka_io.CommitFailedError):
        _consumer(code).commit({kafka_io.TopicPartition("t", 0): 5})


@pytest.mark.parametrize(
    "code",
    [confluent_kafka.KafkaError._TRANSPORT, confluent_kafka.KafkaError._TIMED_OUT,
     confluent_kafka.KafkaError.COORDINATOR_NOT_AVAILABLE, confluent_kafka.KafkaError._ALL_BROKERS_DOWN],
)
def test_broker_trouble_is_a_plain_kafka_error(code: int) -> None:
    with pytest.raises(kafka_io.KafkaError) as info:
        _consumer(code).commit({kafka_io.TopicPartition("t", 0): 5})
    assert not isinstance(info.value, kafka_io.CommitFailedError)


class _Watermarks:
    """Answers with the given error codes first, then (3, 9)."""

    def __init__(self, *codes: int) -> None:
        self.codes, self.calls = list(codes), 0

    def get_watermark_offsets(self, _tp: object, timeout: float) -> tuple[int, int]:
        self.calls += 1
        if self.codes:
            raise confluent_kafka.KafkaException(confluent_kafka.KafkaError(self.codes.pop(0)))
        return 3, 9


def _reader(fake: _Watermarks) -> kafka_io.GroupConsumer:
    return _wrap(fake)


def test_watermarks_ask_again_while_the_leader_moves() -> None:
    fake = _Watermarks(confluent_kafka.KafkaError.NOT_LEADER_FOR_PARTITION,
                       confluent_kafka.KafkaError.LEADER_NOT_AVAILABLE)
    tp = kafka_io.TopicPartition("t", 0)
    assert _reader(fake).watermarks([tp], timeout_s=5.0) == {tp: (3, 9)}
    assert fake.calls == 3


def test_watermarks_give_up_at_the_deadline_and_on_other_errors() -> None:
    tp = kafka_io.TopicPartition("t", 0)
    stuck = _Watermarks(*[confluent_kafka.KafkaError.NOT_LEADER_FOR_PARTITION] * 1000)
    with pytest.raises(kafka_io.KafkaError, match="end offsets of t:0"):
        _reader(stuck).watermarks([tp], timeout_s=0.3)
    assert 1 < stuck.calls < 10
    other = _Watermarks(confluent_kafka.KafkaError.TOPIC_AUTHORIZATION_FAILED)
    with pytest.raises(kafka_io.KafkaError):
        _reader(other).watermarks([tp], timeout_s=5.0)
    assert other.calls == 1
