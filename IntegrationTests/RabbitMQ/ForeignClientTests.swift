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

        /// What a plain AMQP client (librabbitmq, as pika would) reads of one message.
        struct RawMessage {
            var properties: [String: String] = [:]
            var timestamp: UInt64?
            var headers: [String: String] = [:]
            var body = ""
        }

        /// Takes one message from `queue` with `basic.get` (blocking, on the caller's thread).
        static func rawGet(queue: String) throws -> RawMessage {
            let settings = RabbitMQBroker.settings
            let state = try #require(amqp_new_connection())
            defer { amqp_destroy_connection(state) }
            let socket = try #require(amqp_tcp_socket_new(state))
            try #require(amqp_socket_open(socket, settings.host, Int32(settings.port)) == AMQP_STATUS_OK.rawValue)
            let login = courier_amqp_login_plain(state, settings.virtualHost, 0, 131_072, 0, settings.username, settings.password.revealed)
            try #require(login.reply_type == AMQP_RESPONSE_NORMAL)
            _ = amqp_channel_open(state, 1)
            try #require(amqp_get_rpc_reply(state).reply_type == AMQP_RESPONSE_NORMAL)
            let got = queue.withCString { amqp_basic_get(state, 1, amqp_cstring_bytes($0), 1) }
            try #require(got.reply_type == AMQP_RESPONSE_NORMAL && got.reply.id == AMQP_BASIC_GET_OK_METHOD, "basic.get found no message")
            var message = amqp_message_t()
            try #require(amqp_read_message(state, 1, &message, 0).reply_type == AMQP_RESPONSE_NORMAL)
            defer { amqp_destroy_message(&message) }
            func text(_ bytes: amqp_bytes_t) -> String {
                bytes.len == 0 ? "" : String(decoding: UnsafeRawBufferPointer(start: bytes.bytes, count: bytes.len), as: UTF8.self)
            }
            var raw = RawMessage()
            let properties = message.properties
            let strings: [(Int32, String, amqp_bytes_t)] = [
                (AMQP_BASIC_MESSAGE_ID_FLAG, "message_id", properties.message_id),
                (AMQP_BASIC_TYPE_FLAG, "type", properties.type),
                (AMQP_BASIC_CONTENT_TYPE_FLAG, "content_type", properties.content_type),
                (AMQP_BASIC_APP_ID_FLAG, "app_id", properties.app_id),
                (AMQP_BASIC_CORRELATION_ID_FLAG, "correlation_id", properties.correlation_id),
            ]
            for (flag, name, value) in strings where properties._flags & amqp_flags_t(flag) != 0 { raw.properties[name] = text(value) }
            if properties._flags & amqp_flags_t(AMQP_BASIC_TIMESTAMP_FLAG) != 0 { raw.timestamp = properties.timestamp }
            if properties._flags & amqp_flags_t(AMQP_BASIC_HEADERS_FLAG) != 0, let entries = properties.headers.entries {
                for index in 0..<Int(properties.headers.num_entries) {
                    raw.headers[text(entries[index].key)] = text(entries[index].value.value.bytes)
                }
            }
            raw.body = text(message.body)
            _ = amqp_channel_close(state, 1, AMQP_REPLY_SUCCESS)
            _ = amqp_connection_close(state, AMQP_REPLY_SUCCESS)
            return raw
        }

        /// A bus-like message with every well-known attribute.
        static func busLikeEnvelope(type: String = "OrderPlaced.v1") -> Envelope {
            var envelope = Envelope(
                payload: Array(#"{"order":1}"#.utf8), headers: ["tenant": "eu", CourierHeader.source: "/shop"], key: "order-1",
                timestamp: Date(timeIntervalSince1970: 1_700_000_000.123))
            envelope.type = type
            envelope.contentType = "application/json"
            envelope.correlationID = "conversation-9"
            envelope.causationID = "cause-3"
            return envelope
        }

        /// By default the well-known attributes travel as the basic properties every AMQP
        /// client reads, and only the rest in the headers table; Courier reads them back as
        /// the same headers.
        @Test func theWellKnownAttributesArePublishedAsBasicProperties() async throws {
            let transport = try await RabbitMQBroker.connect()
            let queue = "properties-\(MessageID.random().prefix(8).lowercased())"
            let envelope = Self.busLikeEnvelope()
            try await transport.send(envelope, to: queue)
            let raw = try Self.rawGet(queue: queue)
            #expect(
                raw.properties == [
                    "message_id": envelope.id, "type": "OrderPlaced.v1", "content_type": "application/json", "app_id": "/shop",
                    "correlation_id": "conversation-9",
                ])
            #expect(raw.timestamp == 1_700_000_000)
            #expect(
                raw.headers == [
                    CourierHeader.time: "2023-11-14T22:13:20.123Z", CourierHeader.causationID: "cause-3",
                    CourierHeader.partitionKey: "order-1", "tenant": "eu",
                ])
            #expect(raw.body == #"{"order":1}"#)

            // Courier reads its own message back unchanged.
            try await transport.send(envelope, to: queue)
            let subscription = try await transport.consume(queue: queue)
            var iterator = subscription.makeAsyncIterator()
            let delivery = try #require(try await iterator.next())
            #expect(delivery.envelope == envelope)
            try await delivery.ack()
            await subscription.close()
            try await transport.shutdown()
        }

        /// `attributes=headers` keeps every attribute in the headers table too; a value too long
        /// for a property (255 bytes) stays a header with either mapping.
        @Test func theHeadersMappingAndLongValuesKeepTheHeaders() async throws {
            let headersTransport = try await RabbitMQBroker.connect { $0.settings.attributes = .headers }
            let queue = "properties-\(MessageID.random().prefix(8).lowercased())"
            let envelope = Self.busLikeEnvelope()
            try await headersTransport.send(envelope, to: queue)
            let raw = try Self.rawGet(queue: queue)
            #expect(
                Set(raw.headers.keys) == [
                    CourierHeader.id, CourierHeader.time, CourierHeader.specVersion, CourierHeader.type, CourierHeader.contentType,
                    CourierHeader.source, CourierHeader.correlationID, CourierHeader.causationID, CourierHeader.partitionKey, "tenant",
                ])
            #expect(raw.properties["message_id"] == envelope.id && raw.properties["content_type"] == "application/json")
            try await headersTransport.shutdown()

            let transport = try await RabbitMQBroker.connect()
            let long = Self.busLikeEnvelope(type: String(repeating: "T", count: 300))
            try await transport.send(long, to: queue)
            let rawLong = try Self.rawGet(queue: queue)
            #expect(rawLong.properties["type"] == nil && rawLong.headers[CourierHeader.type] == long.type)
            try await transport.send(long, to: queue)
            let subscription = try await transport.consume(queue: queue)
            var iterator = subscription.makeAsyncIterator()
            let delivery = try #require(try await iterator.next())
            #expect(delivery.envelope == long)
            try await delivery.ack()
            await subscription.close()
            try await transport.shutdown()
        }
    }
}
