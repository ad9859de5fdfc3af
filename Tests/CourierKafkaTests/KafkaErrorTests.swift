import Courier
import Crdkafka
import Testing

@testable import CourierKafka

/// librdkafka's errors as Courier errors: transient ones say that trying again may succeed
/// (as on RabbitMQ), a caller's or configuration mistake does not.
@Suite struct KafkaErrorTests {
    @Test(arguments: [
        RD_KAFKA_RESP_ERR__TRANSPORT, RD_KAFKA_RESP_ERR__ALL_BROKERS_DOWN, RD_KAFKA_RESP_ERR__RESOLVE,
        RD_KAFKA_RESP_ERR__TIMED_OUT, RD_KAFKA_RESP_ERR_REQUEST_TIMED_OUT, RD_KAFKA_RESP_ERR__MSG_TIMED_OUT,
        RD_KAFKA_RESP_ERR_NOT_LEADER_FOR_PARTITION, RD_KAFKA_RESP_ERR_LEADER_NOT_AVAILABLE,
        RD_KAFKA_RESP_ERR_NOT_COORDINATOR, RD_KAFKA_RESP_ERR_COORDINATOR_NOT_AVAILABLE,
        RD_KAFKA_RESP_ERR_REBALANCE_IN_PROGRESS, RD_KAFKA_RESP_ERR_NOT_ENOUGH_REPLICAS,
    ])
    func transientFailuresAreRetriable(_ code: rd_kafka_resp_err_t) {
        let error = KafkaClient.error(code, "producing to orders")
        #expect(error.isRetriable, "\(error)")
        #expect(error.message.hasPrefix("producing to orders: "))
    }

    @Test(arguments: [
        RD_KAFKA_RESP_ERR_MSG_SIZE_TOO_LARGE, RD_KAFKA_RESP_ERR_UNKNOWN_TOPIC_OR_PART, RD_KAFKA_RESP_ERR__UNKNOWN_TOPIC,
        RD_KAFKA_RESP_ERR_SASL_AUTHENTICATION_FAILED, RD_KAFKA_RESP_ERR__AUTHENTICATION, RD_KAFKA_RESP_ERR_TOPIC_AUTHORIZATION_FAILED,
        RD_KAFKA_RESP_ERR_INVALID_CONFIG, RD_KAFKA_RESP_ERR__FATAL, RD_KAFKA_RESP_ERR__DESTROY,
    ])
    func mistakesAreNotRetriable(_ code: rd_kafka_resp_err_t) {
        #expect(!KafkaClient.error(code, "producing to orders").isRetriable)
    }

    @Test func classificationKeepsTheCode() {
        #expect(KafkaClient.error(RD_KAFKA_RESP_ERR__TRANSPORT, "x").code == .unreachable)
        #expect(KafkaClient.error(RD_KAFKA_RESP_ERR__MSG_TIMED_OUT, "x").code == .notConfirmed)
        #expect(KafkaClient.error(RD_KAFKA_RESP_ERR_MSG_SIZE_TOO_LARGE, "x").code == .payloadTooLarge)
        #expect(KafkaClient.error(RD_KAFKA_RESP_ERR_NOT_LEADER_FOR_PARTITION, "x").code == .brokerRejected)
    }
}
