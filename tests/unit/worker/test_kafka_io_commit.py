"""GroupConsumer.commit's error mapping (pure logic over a stand-in for librdkafka's consumer): the
callers retry a KafkaError (broker away) but give up on a CommitFailedError (the group moved on).
And GroupConsumer.watermarks: a moving leader is asked again, other errors are not."""

from __future__ import annotations

import confluent_kafka
import pytest

from worker import kafka_io


class _Refusing:
    def __init__(self, code: int) -> None:
        self.code = code

    def commit(self, **_: object) -> None:
        raise confluent_kafka.KafkaException(confluent_kafka.KafkaError(self.code))


def _consumer(code: int) -> kafka_io.GroupConsumer:
    c = object.__new__(kafka_io.GroupConsumer)
    c._c = _Refusing(code)
    return c


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
    c = object.__new__(kafka_io.GroupConsumer)
    c._c = fake
    return c


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
