"""GroupConsumer.commit's error mapping (pure logic over a stand-in for librdkafka's consumer): the
callers retry a KafkaError (broker away) but give up on a CommitFailedError (the group moved on)."""

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
