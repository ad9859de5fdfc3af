import Courier
import CourierRabbitMQ
import Foundation
import Testing

/// RabbitMQ-specific behaviours beyond the conformance suite, against the real broker.
extension BrokerIntegration.RabbitMQIntegration {
    @Suite("RabbitMQTransport")
    struct RabbitMQTransportTests {
        private func unique(_ name: String) -> String { "rmq-test-\(name)-\(MessageID.random().prefix(8).lowercased())" }

        @Test func anUnreachableBrokerFailsFastWithATypedError() async throws {
            var settings = RabbitMQBroker.settings
            settings.port = 1  // nothing listens there
            settings.connectionTimeoutSeconds = 2
            let started = ContinuousClock.now
            do {
                _ = try await RabbitMQTransport.connect(.init(settings: settings))
                Issue.record("connecting to port 1 succeeded")
            } catch let error as CourierError {
                #expect(error.code == .unreachable)
                #expect(error.isRetriable)
                #expect(error.message.contains("127.0.0.1:1"))
            }
            #expect(ContinuousClock.now - started < .seconds(5), "no hang")
        }

        @Test func wrongCredentialsFailWithAClearErrorWithoutThePassword() async throws {
            var settings = RabbitMQBroker.settings
            settings.password = Secret("definitely-wrong-password")
            do {
                _ = try await RabbitMQTransport.connect(.init(settings: settings))
                Issue.record("logging in with a wrong password succeeded")
            } catch let error as CourierError {
                #expect(error.code == .authenticationFailed)
                #expect(error.message.contains("guest"))
                #expect(!error.message.contains("definitely-wrong-password"))
            }
        }

        /// A wrong password is an authentication failure, not retriable.
        @Test func wrongCredentialsAreNotRetriable() async throws {
            var settings = RabbitMQBroker.settings
            settings.password = Secret("another-wrong-password")
            await #expect {
                _ = try await RabbitMQTransport.connect(.init(settings: settings))
            } throws: { error in
                (error as? CourierError).map { $0.code == .authenticationFailed && !$0.isRetriable } ?? false
            }
        }

        /// An unknown virtual host (530 NOT_ALLOWED) is a configuration error that names the
        /// vhost and says how to create it, not a retriable "unreachable".
        @Test func anUnknownVirtualHostIsAConfigurationError() async throws {
            var settings = RabbitMQBroker.settings
            settings.virtualHost = "no-such-vhost-\(MessageID.random().prefix(6))"
            do {
                _ = try await RabbitMQTransport.connect(.init(settings: settings))
                Issue.record("an unknown vhost was accepted")
            } catch let error as CourierError {
                #expect(error.code == .invalidConfiguration, "\(error)")
                #expect(!error.isRetriable)
                #expect(error.message.contains(settings.virtualHost) && error.message.contains("add_vhost"), "\(error.message)")
            }
        }

        /// A server that accepts the TCP connection and closes it (a broker starting up, a proxy,
        /// another service on the port) is a retriable connection failure, never "check the user
        /// name and password".
        @Test func aServerThatClosesTheConnectionIsRetriableAndNotAnAuthenticationFailure() async throws {
            for behaviour in [LoopbackServer.Behaviour.closeAtOnce, .neverAnswer] {
                let server = try LoopbackServer(behaviour)
                defer { server.stop() }
                do {
                    _ = try await RabbitMQTransport.connect("amqp://guest:guest@127.0.0.1:\(server.port)/?connection_timeout=1")
                    Issue.record("a server that is not RabbitMQ was accepted")
                } catch let error as CourierError {
                    #expect(error.code == .unreachable, "\(behaviour): \(error)")
                    #expect(error.isRetriable)
                    #expect(!error.message.contains("password"), "\(error.message)")
                }
            }
        }

        @Test func aBadURLIsRefusedBeforeConnecting() async throws {
            await #expect(throws: CourierError.self) { _ = try await RabbitMQTransport.connect("kafka://localhost:9092") }
            await #expect(throws: CourierError.self) { _ = try await RabbitMQTransport.connect("amqp://host:notaport/") }
        }

        @Test func delayedNackRedeliversAfterTheDelayThroughADelayQueue() async throws {
            let transport = try await RabbitMQBroker.connect()
            let queue = unique("delay")
            let consumer = try await transport.consume(queue: queue)
            try await transport.send(Envelope(text: "later", headers: ["x-user": "kept"]), to: queue)
            var iterator = consumer.makeAsyncIterator()
            let first = try #require(try await iterator.next())
            let nackedAt = ContinuousClock.now
            try await first.nack(delay: .milliseconds(700))
            let second = try #require(try await iterator.next())
            #expect(ContinuousClock.now - nackedAt >= .milliseconds(650))
            #expect(second.attempt == 2)
            #expect(second.envelope.id == first.envelope.id)
            // The broker added x-death tables on the way through the delay queue: read, then hidden.
            #expect(second.envelope.headers == ["x-user": "kept"])
            try await second.ack()
            await consumer.close()
            try await transport.shutdown()
        }

        @Test func delayBucketsRoundUpToTwoSignificantDigits() {
            #expect(RabbitMQTopology.delayBucket(.milliseconds(1)) == 1)
            #expect(RabbitMQTopology.delayBucket(.milliseconds(99)) == 99)
            #expect(RabbitMQTopology.delayBucket(.milliseconds(1234)) == 1300)
            #expect(RabbitMQTopology.delayBucket(.seconds(30)) == 30000)
            #expect(RabbitMQTopology.delayBucket(.microseconds(1500)) == 2)
        }

        @Test func topologyNamesFollowTheConvention() {
            let topology = RabbitMQTopology()
            #expect(topology.exchange("orders") == "orders")
            #expect(topology.queue(for: .topic("orders", group: "billing")) == "orders.billing")
            #expect(topology.queue(for: .queue("charge-card")) == "charge-card")
            #expect(topology.deadLetterQueue(.topic("orders", group: "billing")) == "orders.billing.dead-letter")
            #expect(topology.delayQueue("charge-card", 1300) == "charge-card.delay.1300ms")
        }

        @Test func aReplacedNamingConventionIsUsedOnTheBroker() async throws {
            let prefix = unique("custom")
            let transport = try await RabbitMQBroker.connect { configuration in
                configuration.topology.commandQueue = { "\(prefix).cmd.\($0)" }
            }
            let other = try await RabbitMQBroker.connect()
            try await transport.send(Envelope(text: "renamed"), to: "work")
            // A transport with the default convention reads the renamed queue under its real name.
            let consumer = try await other.consume(queue: "\(prefix).cmd.work")
            var iterator = consumer.makeAsyncIterator()
            #expect(try await iterator.next()?.envelope.text == "renamed")
            await consumer.close()
            try await transport.shutdown()
            try await other.shutdown()
        }

        @Test func quorumQueuesWork() async throws {
            guard case .amqp(let settings) = try TransportURL(RabbitMQBroker.url + "?queue_type=quorum") else { return }
            let transport = try await RabbitMQTransport.connect(.init(settings: settings))
            let queue = unique("quorum")
            try await transport.send(Envelope(text: "q"), to: queue)
            let consumer = try await transport.consume(queue: queue)
            var iterator = consumer.makeAsyncIterator()
            let delivery = try #require(try await iterator.next())
            try await delivery.nack()
            let again = try #require(try await iterator.next())
            #expect(again.attempt == 2)
            try await again.ack()
            await consumer.close()
            try await transport.shutdown()
        }

        @Test func tlsConnectionWithAThrowAwayCA() async throws {
            let tls = RabbitMQBroker.tlsDirectory
            let url = "amqps://guest:guest@localhost:5671/?cacertfile=\(tls)/ca.pem&certfile=\(tls)/client.pem&keyfile=\(tls)/client.key"
            let transport = try await RabbitMQTransport.connect(url)
            let queue = unique("tls")
            try await transport.send(Envelope(text: "over TLS"), to: queue)
            let consumer = try await transport.consume(queue: queue)
            var iterator = consumer.makeAsyncIterator()
            let delivery = try #require(try await iterator.next())
            #expect(delivery.envelope.text == "over TLS")
            try await delivery.ack()
            await consumer.close()
            try await transport.shutdown()
        }

        @Test func tlsRefusesABrokerItCannotVerify() async throws {
            // Without the test CA the broker's certificate cannot be verified.
            let url = "amqps://guest:guest@localhost:5671/?cacertfile=\(RabbitMQBroker.tlsDirectory)/client.pem&connection_timeout=3"
            do {
                _ = try await RabbitMQTransport.connect(url)
                Issue.record("an unverifiable broker was accepted")
            } catch let error as CourierError {
                #expect(error.code == .unreachable || error.code == .invalidConfiguration)
            }
        }

        @Test func oversizedMessagesAreRefusedWithoutTouchingTheBroker() async throws {
            let transport = try await RabbitMQBroker.connect { $0.maxPayloadSize = 1024 }
            do {
                try await transport.send(Envelope(payload: [UInt8](repeating: 1, count: 1025)), to: unique("big"))
                Issue.record("an oversized message was sent")
            } catch let error as CourierError {
                #expect(error.code == .payloadTooLarge)
            }
            try await transport.shutdown()
        }

        @Test func largeMessagesSpanSeveralFrames() async throws {
            let transport = try await RabbitMQBroker.connect()
            let queue = unique("large")
            let payload = (0..<(1 << 20)).map { UInt8(truncatingIfNeeded: $0 &* 31) }
            try await transport.send(Envelope(payload: payload), to: queue)
            let consumer = try await transport.consume(queue: queue)
            var iterator = consumer.makeAsyncIterator()
            let delivery = try #require(try await iterator.next())
            #expect(delivery.envelope.payload == payload)
            try await delivery.ack()
            await consumer.close()
            try await transport.shutdown()
        }
    }
}
