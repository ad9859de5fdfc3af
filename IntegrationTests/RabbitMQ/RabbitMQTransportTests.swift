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

        // MARK: Several nodes in one URL

        /// A node that cannot be reached is skipped: the transport connects to the next.
        @Test func aMultiHostURLConnectsToTheFirstNodeThatAnswers() async throws {
            var settings = RabbitMQBroker.settings
            settings.hosts = [AMQPSettings.Endpoint(host: "127.0.0.1", port: 1)] + settings.hosts
            settings.connectionTimeoutSeconds = 4
            let transport = try await RabbitMQTransport.connect(.init(settings: settings))
            let queue = unique("multi-host")
            try await transport.send(Envelope(text: "via the second node"), to: queue)
            let consumer = try await transport.consume(queue: queue)
            var iterator = consumer.makeAsyncIterator()
            let delivery = try #require(try await iterator.next())
            #expect(delivery.envelope.text == "via the second node")
            try await delivery.ack()
            await consumer.close()
            try await transport.shutdown()
        }

        /// Every node unreachable: one typed, retriable error naming each node and no
        /// password, within the connection timeout.
        @Test func aMultiHostURLWithNoNodeUpFailsWithOneErrorNamingEveryNode() async throws {
            let started = ContinuousClock.now
            do {
                _ = try await RabbitMQTransport.connect("amqp://guest:s3cret-pw@127.0.0.1:1,127.0.0.1:2/?connection_timeout=2")
                Issue.record("connecting to ports 1 and 2 succeeded")
            } catch let error as CourierError {
                #expect(error.code == .unreachable && error.isRetriable)
                #expect(error.message.contains("any of the 2 RabbitMQ nodes"), "\(error.message)")
                #expect(error.message.contains("127.0.0.1:1") && error.message.contains("127.0.0.1:2"), "\(error.message)")
                #expect(!error.message.contains("s3cret-pw") && !"\(error)".contains("s3cret-pw"))
            }
            #expect(ContinuousClock.now - started < .seconds(5), "within the connection timeout")
        }

        /// The node a transport is connected to goes away (its connections dropped, new ones
        /// refused): the transport fails over to the next node of its URL, resumes its consumer
        /// and goes on; every confirmed message arrives.
        @Test func losingTheConnectedNodeFailsOverToTheNextOne() async throws {
            let broker = RabbitMQBroker.settings
            let first = try LoopbackServer(.forward(toPort: broker.port))
            let second = try LoopbackServer(.forward(toPort: broker.port))
            defer {
                first.stop()
                second.stop()
            }
            var settings = broker
            settings.hosts = [first.port, second.port].map { AMQPSettings.Endpoint(host: "127.0.0.1", port: $0) }
            settings.connectionTimeoutSeconds = 2
            let transport = try await RabbitMQTransport.connect(.init(settings: settings))
            #expect(first.accepted >= 1 && second.accepted == 0, "the first node, in order")
            let queue = unique("failover")
            let consumer = try await transport.consume(queue: queue)
            let received = Task {
                var ids = Set<String>()
                for try await delivery in consumer {
                    ids.insert(delivery.envelope.id)
                    try? await delivery.ack()
                    if ids.count == 100 { break }
                }
                return ids
            }
            var confirmed = Set<String>()
            for round in 0..<2 {
                for index in 0..<50 {
                    let envelope = Envelope(text: "\(round)-\(index)")
                    // A send that fails while the transport reconnects is retried, as a
                    // service would: only confirmed messages count.
                    for attempt in 1...100 {
                        do {
                            try await transport.send(envelope, to: queue)
                            confirmed.insert(envelope.id)
                            break
                        } catch let error as CourierError where error.isRetriable && attempt < 100 {
                            try await Task.sleep(for: .milliseconds(100))
                        }
                    }
                }
                if round == 0 { first.stop() }
            }
            let ids = try await withThrowingTaskGroup(of: Set<String>?.self) { group in
                group.addTask { try await received.value }
                group.addTask {
                    try await Task.sleep(for: .seconds(30))
                    return nil
                }
                defer { group.cancelAll() }
                return try await group.next()!
            }
            #expect(second.accepted >= 1, "the transport moved to the second node")
            #expect(ids == confirmed, "every confirmed message arrived (\(ids?.count ?? 0) of \(confirmed.count))")
            await consumer.close()
            try await transport.shutdown()
        }

        /// Polls `transport`'s health until `accept` takes it, for at most `limit`.
        private func health(
            of transport: RabbitMQTransport, within limit: Duration, _ accept: (TransportHealth) -> Bool
        ) async throws -> TransportHealth {
            let deadline = ContinuousClock.now + limit
            while true {
                let health = await transport.health()
                if accept(health) || ContinuousClock.now >= deadline { return health }
                try await Task.sleep(for: .milliseconds(20))
            }
        }

        /// The only node goes down: both connections report `reconnecting` (unhealthy) with
        /// the reason; when it is back they are `connected` again; after shutdown, `closed`.
        @Test func healthIsUnhealthyWhileTheNodeIsDownAndHealthyAfter() async throws {
            let node = try LoopbackServer(.forward(toPort: RabbitMQBroker.settings.port))
            defer { node.stop() }
            var settings = RabbitMQBroker.settings
            settings.hosts = [AMQPSettings.Endpoint(host: "127.0.0.1", port: node.port)]
            settings.connectionTimeoutSeconds = 2
            let transport = try await RabbitMQTransport.connect(.init(settings: settings))
            let up = await transport.health()
            #expect(up.isHealthy, "\(up)")
            #expect(up.connections.map(\.name) == ["publish", "consume"])
            #expect(up.connections.allSatisfy { $0.node == "127.0.0.1:\(node.port)" && $0.sinceLastContact != nil && $0.lastError == nil })

            node.takeDown()
            // Each connection notices on its own I/O thread: the first makes the transport
            // unhealthy, the other follows within moments.
            let down = try await health(of: transport, within: .seconds(10)) {
                $0.connections.allSatisfy { $0.state == .reconnecting && $0.lastError != nil }
            }
            #expect(!down.isHealthy, "a dead node shows at once: \(down)")
            #expect(down.connections.allSatisfy { $0.state == .reconnecting && $0.lastError != nil }, "\(down)")

            node.bringUp()
            let back = try await health(of: transport, within: .seconds(30)) { $0.isHealthy }
            #expect(back.isHealthy, "healthy again after reconnecting: \(back)")

            try await transport.shutdown()
            let closed = await transport.health()
            #expect(closed.connections.allSatisfy { $0.state == .closed } && !closed.isHealthy)
        }

        /// A node that goes silent (its sockets stay open) is noticed within two heartbeats:
        /// `unresponsive` or already `reconnecting`, then healthy once it answers again.
        @Test func aSilentNodeIsUnhealthyWithinTwoHeartbeats() async throws {
            let node = try LoopbackServer(.forward(toPort: RabbitMQBroker.settings.port))
            defer { node.stop() }
            var settings = RabbitMQBroker.settings
            settings.hosts = [AMQPSettings.Endpoint(host: "127.0.0.1", port: node.port)]
            settings.heartbeatSeconds = 1
            settings.connectionTimeoutSeconds = 2
            let transport = try await RabbitMQTransport.connect(.init(settings: settings))
            #expect(await transport.health().isHealthy)
            node.goSilent()
            let silent = ContinuousClock.now
            let down = try await health(of: transport, within: .seconds(10)) { !$0.isHealthy }
            let noticed = ContinuousClock.now - silent
            #expect(!down.isHealthy)
            // Two heartbeats of 1 s, plus the health check's own granularity and a loaded machine.
            #expect(noticed < .seconds(4), "noticed after \(noticed): \(down)")
            #expect(down.connections.contains { $0.state == .unresponsive || $0.state == .reconnecting }, "\(down)")
            node.bringUp()
            let back = try await health(of: transport, within: .seconds(30)) { $0.isHealthy }
            #expect(back.isHealthy, "\(back)")
            try await transport.shutdown()
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

        /// A quorum queue counts deliveries that came back unsettled (`x-delivery-count`):
        /// each counts as an attempt, so a message whose consumer keeps dying runs out of
        /// attempts (the queue's delivery limit mapped onto Courier's attempts).
        @Test func aQuorumQueuesReturnedDeliveriesCountAsAttempts() async throws {
            guard case .amqp(let settings) = try TransportURL(RabbitMQBroker.url + "?queue_type=quorum") else { return }
            let transport = try await RabbitMQTransport.connect(.init(settings: settings))
            let queue = unique("quorum-returns")
            try await transport.send(Envelope(text: "fragile"), to: queue)
            var attempts: [Int] = []
            for _ in 0..<3 {
                // Taken and never settled: closing returns it, as a consumer that crashed would.
                let consumer = try await transport.consume(queue: queue)
                var iterator = consumer.makeAsyncIterator()
                attempts.append(try #require(try await iterator.next()).attempt)
                await consumer.close()
            }
            #expect(attempts == [1, 2, 3])
            let consumer = try await transport.consume(queue: queue)
            var iterator = consumer.makeAsyncIterator()
            let last = try #require(try await iterator.next())
            #expect(last.attempt == 4)
            try await last.ack()
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
