import CRabbitMQ
import Courier
import CourierRabbitMQ
import Foundation
import Testing

/// Messages published by a client that is not Courier: a bare librabbitmq publish that sets
/// the standard AMQP basic properties and no Courier header at all.
extension BrokerIntegration {
    @Suite("RabbitMQ and foreign clients")
    struct ForeignClientTests {
        /// Publishes `body` to `queue` through the default exchange with every standard basic
        /// property set, as pika or amqplib would; blocking, on the caller's thread.
        static func rawPublish(queue: String, body: String) throws {
            let settings = RabbitMQBroker.settings
            let state = try #require(amqp_new_connection())
            defer { amqp_destroy_connection(state) }
            let socket = try #require(amqp_tcp_socket_new(state))
            try #require(amqp_socket_open(socket, settings.host, Int32(settings.port)) == AMQP_STATUS_OK.rawValue)
            let login = courier_amqp_login_plain(state, settings.virtualHost, 0, 131_072, 0, settings.username, settings.password.revealed)
            try #require(login.reply_type == AMQP_RESPONSE_NORMAL)
            _ = amqp_channel_open(state, 1)
            try #require(amqp_get_rpc_reply(state).reply_type == AMQP_RESPONSE_NORMAL)
            var properties = amqp_basic_properties_t()
            let strings = ["application/json", "gzip", "foreign-id-1", "corr-7", "OrderPlaced", "legacy-shop", "replies", "60000"]
            let copies = strings.map { strdup($0)! }
            defer { copies.forEach { free($0) } }
            let flags: [Int32] = [
                AMQP_BASIC_CONTENT_TYPE_FLAG, AMQP_BASIC_CONTENT_ENCODING_FLAG, AMQP_BASIC_MESSAGE_ID_FLAG, AMQP_BASIC_CORRELATION_ID_FLAG,
                AMQP_BASIC_TYPE_FLAG, AMQP_BASIC_APP_ID_FLAG, AMQP_BASIC_REPLY_TO_FLAG, AMQP_BASIC_EXPIRATION_FLAG,
                AMQP_BASIC_TIMESTAMP_FLAG,
                AMQP_BASIC_DELIVERY_MODE_FLAG,
            ]
            properties._flags = flags.reduce(amqp_flags_t(0)) { $0 | amqp_flags_t($1) }
            properties.content_type = amqp_cstring_bytes(copies[0])
            properties.content_encoding = amqp_cstring_bytes(copies[1])
            properties.message_id = amqp_cstring_bytes(copies[2])
            properties.correlation_id = amqp_cstring_bytes(copies[3])
            properties.type = amqp_cstring_bytes(copies[4])
            properties.app_id = amqp_cstring_bytes(copies[5])
            properties.reply_to = amqp_cstring_bytes(copies[6])
            properties.expiration = amqp_cstring_bytes(copies[7])
            properties.timestamp = 1_700_000_000
            properties.delivery_mode = 2
            let status = queue.withCString { routingKey in
                body.withCString { text in
                    amqp_basic_publish(
                        state, 1, amqp_empty_bytes, amqp_cstring_bytes(routingKey), 0, 0, &properties, amqp_cstring_bytes(text))
                }
            }
            try #require(status == AMQP_STATUS_OK.rawValue)
            _ = amqp_channel_close(state, 1, AMQP_REPLY_SUCCESS)
            _ = amqp_connection_close(state, AMQP_REPLY_SUCCESS)
        }

        @Test func theStandardBasicPropertiesOfAForeignMessageAreMapped() async throws {
            let transport = try await RabbitMQBroker.connect()
            let queue = "foreign-\(MessageID.random().prefix(8).lowercased())"
            let subscription = try await transport.consume(queue: queue)
            try Self.rawPublish(queue: queue, body: #"{"order":1}"#)
            var iterator = subscription.makeAsyncIterator()
            let delivery = try #require(try await iterator.next())
            let envelope = delivery.envelope
            #expect(envelope.id == "foreign-id-1")
            #expect(envelope.timestamp == Date(timeIntervalSince1970: 1_700_000_000))
            #expect(envelope.contentType == "application/json")
            #expect(envelope.headers[CourierHeader.contentType] == "application/json")
            #expect(envelope.headers[RabbitMQTransport.PropertyHeader.contentEncoding] == "gzip")
            #expect(envelope.headers[CourierHeader.correlationID] == "corr-7")
            #expect(envelope.headers[CourierHeader.type] == "OrderPlaced")
            #expect(envelope.headers[CourierHeader.source] == "legacy-shop")
            #expect(envelope.headers[RabbitMQTransport.PropertyHeader.replyTo] == "replies")
            #expect(envelope.headers[RabbitMQTransport.PropertyHeader.expiration] == "60000")
            #expect(envelope.text == #"{"order":1}"#)
            try await delivery.ack()
            await subscription.close()
            try await transport.shutdown()
        }
    }
}
