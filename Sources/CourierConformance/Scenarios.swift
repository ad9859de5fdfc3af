import Courier
import Foundation
import Synchronization

/// The scenarios of CONFORMANCE.md. Each method returns a one-line summary when it passes,
/// throws ``ConformanceFailure`` when it does not.
struct Scenarios: Sendable {
    let suite: ConformanceSuite
    let scenario: ConformanceScenario

    func run() async throws -> ConformanceOutcome {
        let capabilities = try await suite.capabilities()
        if let reason = Self.skipReason(for: scenario, capabilities: capabilities, configuration: suite.configuration) {
            return .skipped(reason)
        }
        switch scenario {
        case .publishSubscribe: return .passed(try await publishSubscribe())
        case .concurrentPublishersAndSubscribers: return .passed(try await concurrentPublishersAndSubscribers())
        case .manyTopics: return .passed(try await manyTopics())
        case .nackRedelivers: return .passed(try await nackRedelivers())
        case .ackGatesOrder: return .passed(try await ackGatesOrder())
        case .groupsAreDurable: return .passed(try await groupsAreDurable())
        case .concurrentClose: return .passed(try await concurrentClose())
        case .continueAfterErrors: return .passed(try await continueAfterErrors())
        case .perKeyOrder: return .passed(try await perKeyOrder(competing: capabilities.ordering == .perKey))
        case .groupsFanOut: return .passed(try await groupsFanOut())
        case .commandsGoToExactlyOne: return .passed(try await commandsGoToExactlyOne())
        case .commandsWaitForTheirConsumer: return .passed(try await commandsWaitForTheirConsumer())
        case .publisherClose: return .passed(try await publisherClose())
        case .topicsAreIsolated: return .passed(try await topicsAreIsolated())
        case .deadLetter: return .passed(try await deadLetter())
        case .consumerDiesBeforeAck: return .passed(try await consumerDiesBeforeAck())
        case .reconnect: return .passed(try await reconnect(restart: suite.configuration.restartBroker!))
        case .lateGroupReadsHistory: return .passed(try await lateGroupReadsHistory())
        case .headersAndKeysSurvive: return .passed(try await headersAndKeysSurvive())
        case .badInput: return .passed(try await badInput(capabilities))
        }
    }

    /// Why `scenario` cannot run on a transport with `capabilities`, or `nil` when it can.
    static func skipReason(for scenario: ConformanceScenario, capabilities: TransportCapabilities, configuration: ConformanceConfiguration)
        -> String?
    {
        switch scenario {
        case .ackGatesOrder, .perKeyOrder:
            capabilities.ordering == .none ? "the \(capabilities.system) transport declares no per-key ordering" : nil
        case .reconnect:
            if !capabilities.survivesBrokerRestart {
                "the \(capabilities.system) transport does not survive a broker restart (survivesBrokerRestart is false)"
            } else if configuration.restartBroker == nil {
                "no restartBroker hook was configured, so the broker cannot be restarted in this run"
            } else {
                nil
            }
        case .lateGroupReadsHistory:
            capabilities.replay ? nil : "the \(capabilities.system) transport declares no replay"
        default:
            nil
        }
    }

    // 1
    func publishSubscribe() async throws -> String {
        try await withTransport { transport in
            let topic = name("topic")
            let subscription = try await transport.subscribe(to: topic, group: name("group"))
            let sent = envelopes(100, "event")
            try await transport.publish(sent, to: topic)
            let received = try await read([subscription], expecting: Set(sent.map(\.id)))
            try expectAll(sent, in: received, "publish-subscribe")
            for envelope in sent {
                let got = received.arrival(envelope.id)!.envelope
                try check(got.payload == envelope.payload, "message \(envelope.id) arrived with another payload")
                try check(
                    got.headers == envelope.headers, "message \(envelope.id) arrived with headers \(got.headers), sent \(envelope.headers)")
            }
            // The stream ends when the subscription is closed (read closed it).
            _ = try await within(suite.configuration.idleTimeout, "iterating a closed subscription") {
                for try await _ in subscription {}
            }

            // Events published before any group existed do not reach a group starting at latest.
            let late = name("late-topic")
            try await transport.publish(envelopes(10, "before-group"), to: late)
            let group = try await transport.subscribe(to: late, group: name("late-group"))
            let marker = envelopes(1, "marker")
            try await transport.publish(marker, to: late)
            let afterwards = try await read([group], expecting: Set(marker.map(\.id)))
            try expectAll(marker, in: afterwards, "a new group starting at latest")
            return
                "100 events intact, stream ended on close, 10 earlier events not delivered to a late group, \(received.duplicates) duplicates"
        }
    }

    // 2
    func concurrentPublishersAndSubscribers() async throws -> String {
        let total = count(full: 5000, short: 100)
        return try await withTransport { transport in
            let topic = name("topic")
            let group = name("group")
            var subscriptions: [Subscription] = []
            for _ in 0..<10 { subscriptions.append(try await transport.subscribe(to: topic, group: group)) }
            let sent = envelopes(total, "event")
            async let reading = read(subscriptions, expecting: Set(sent.map(\.id)))
            try await publishConcurrently(sent, publishers: 50, to: topic, on: transport)
            let received = try await reading
            try expectAll(sent, in: received, "50 publishers, 10 consumers")
            let busy = (0..<10).filter { !received.ids(ackedBy: $0).isEmpty }.count
            return "\(total) messages from 50 publishers to 10 consumers (\(busy) of them received some), \(received.duplicates) duplicates"
        }
    }

    // 3
    func manyTopics() async throws -> String {
        let topics = count(full: 20, short: 10)
        return try await withTransport { transport in
            try await withThrowingTaskGroup(of: Void.self) { group in
                for index in 0..<topics {
                    group.addTask {
                        let topic = name("topic\(index)")
                        let subscription = try await transport.subscribe(to: topic, group: name("group"))
                        let sent = envelopes(20, "topic\(index)")
                        try await transport.publish(sent, to: topic)
                        let received = try await read([subscription], expecting: Set(sent.map(\.id)))
                        try expectAll(sent, in: received, "topic \(index) of \(topics)")
                    }
                }
                try await group.waitForAll()
            }
            return "\(topics) topics at once, 20 messages each, each got exactly its own"
        }
    }

    // 4
    func nackRedelivers() async throws -> String {
        try await withTransport { transport in
            let topic = name("topic")
            let subscription = try await transport.subscribe(to: topic, group: name("group"))
            let sent = envelopes(100, "event")
            let nacked = Set(sent.prefix(2).map(\.id))
            try await transport.publish(sent, to: topic)
            let received = try await read([subscription], expecting: Set(sent.map(\.id))) { delivery, _ in
                nacked.contains(delivery.envelope.id) && delivery.attempt == 1 ? .nack(.zero) : .ack
            }
            try expectAll(sent, in: received, "nack redelivers")
            for id in nacked {
                let attempt = received.arrival(id)!.attempt
                try check(attempt == 2, "nacked message \(id) was acked at attempt \(attempt), expected 2")
            }
            for id in Set(sent.map(\.id)).subtracting(nacked) {
                let attempt = received.arrival(id)!.attempt
                try check(attempt == 1, "message \(id), never nacked, arrived with attempt \(attempt), expected 1")
            }
            return "100 messages, 2 nacked once and redelivered with attempt 2"
        }
    }

    // 5
    func ackGatesOrder() async throws -> String {
        try await withTransport { transport in
            let topic = name("topic")
            let subscription = try await transport.subscribe(to: topic, group: name("group"))
            let sent = envelopes(2, "ordered") { _ in "the-key" }
            try await transport.publish(sent, to: topic)
            let inbox = Inbox(subscription)
            defer { inbox.stop() }
            guard let first = try await inbox.next(within: suite.configuration.idleTimeout) else {
                throw fail("message 1 did not arrive")
            }
            try check(first.envelope.id == sent[0].id, "message 2 arrived before message 1 on one key")
            if let early = try await inbox.next(within: .milliseconds(100)) {
                throw fail("message \(early.envelope.id) arrived while message 1 of its key was un-acked")
            }
            try await first.ack()
            guard let second = try await inbox.next(within: suite.configuration.idleTimeout) else {
                throw fail("message 2 did not arrive after message 1 was acked")
            }
            try check(second.envelope.id == sent[1].id, "after the ack, \(second.envelope.id) arrived instead of message 2")
            try await second.ack()
            await subscription.close()
            return "message 2 held back for 100 ms while message 1 was un-acked, delivered after the ack"
        }
    }

    // 6
    func groupsAreDurable() async throws -> String {
        try await withTransport { transport in
            let topic = name("topic")
            let group = name("group")
            await (try await transport.subscribe(to: topic, group: group)).close()
            let sent = envelopes(50, "while-down")
            try await transport.publish(sent, to: topic)
            let received = try await read([try await transport.subscribe(to: topic, group: group)], expecting: Set(sent.map(\.id)))
            try expectAll(sent, in: received, "events published while the group had no consumer")

            // Continue after close: batches read by fresh consumers that each close twice.
            let total = count(full: 5000, short: 50)
            let batch = max(1, total / 10)
            let many = envelopes(total, "batches")
            try await transport.publish(many, to: topic)
            var seen = Set<String>()
            var consumers = 0
            while seen.count < total {
                let subscription = try await transport.subscribe(to: topic, group: group)
                consumers += 1
                let part = try await read([subscription], expecting: [], limit: batch, linger: false)
                await subscription.close()
                await subscription.close()
                if part.count == 0 { break }
                seen.formUnion(part.ids)
            }
            var failure = fail("continue after close: \(seen.count) of \(total) messages arrived across \(consumers) consumers")
            failure.missing = many.map(\.id).filter { !seen.contains($0) }
            failure.extra = seen.subtracting(many.map(\.id)).sorted()
            if !failure.missing.isEmpty || !failure.extra.isEmpty { throw failure }
            return "50 events kept while the group was down; \(total) read in batches by \(consumers) fresh consumers, nothing lost"
        }
    }

    // 7
    func concurrentClose() async throws -> String {
        try await withTransport { transport in
            let topic = name("topic")
            let group = name("group")
            try await withThrowingTaskGroup(of: Void.self) { tasks in
                for _ in 0..<10 {
                    tasks.addTask {
                        let subscription = try await transport.subscribe(to: topic, group: group)
                        await subscription.close()
                    }
                }
                try await tasks.waitForAll()
            }
            let sent = envelopes(50, "after-close")
            try await transport.publish(sent, to: topic)
            let received = try await read([try await transport.subscribe(to: topic, group: group)], expecting: Set(sent.map(\.id)))
            try expectAll(sent, in: received, "after 10 concurrent subscribe-and-close")
            return "10 subscriptions opened and closed concurrently, then 50 messages all arrived"
        }
    }

    // 8
    func continueAfterErrors() async throws -> String {
        try await withTransport { transport in
            let topic = name("topic")
            let group = name("group")
            let options = SubscriptionOptions(maxDeliveryAttempts: 10_000)
            var subscriptions: [Subscription] = []
            for _ in 0..<3 { subscriptions.append(try await transport.subscribe(to: topic, group: group, options: options)) }
            let sent = envelopes(100, "event")
            let nacks = Locked<[Int: Int]>([:])
            try await transport.publish(sent, to: topic)
            let received = try await read(subscriptions, expecting: Set(sent.map(\.id))) { _, consumer in
                let nacking = nacks.withLock { counts in
                    counts[consumer, default: 0] += 1
                    return counts[consumer]! <= 30
                }
                return nacking ? .nack(.zero) : .ack
            }
            try expectAll(sent, in: received, "after 3 consumers nacked 30 deliveries each")
            return "3 consumers nacked 30 deliveries each, then all 100 messages were acked"
        }
    }

    // 9
    func perKeyOrder(competing: Bool) async throws -> String {
        let total = count(full: 1000, short: 100)
        let consumers = competing ? 10 : 1
        return try await withTransport { transport in
            let topic = name("topic")
            let group = name("group")
            var subscriptions: [Subscription] = []
            for _ in 0..<consumers { subscriptions.append(try await transport.subscribe(to: topic, group: group)) }
            let sent = envelopes(total, "keyed") { "key-\($0 % 16)" }
            try await transport.publish(sent, to: topic)
            let received = try await read(subscriptions, expecting: Set(sent.map(\.id)))
            try expectAll(sent, in: received, "per-key order")
            let position = Dictionary(uniqueKeysWithValues: received.ackOrder.enumerated().map { ($1, $0) })
            var outOfOrder: [String] = []
            for key in 0..<16 {
                let keyed = sent.filter { $0.key == "key-\(key)" }.map(\.id)
                for (earlier, later) in zip(keyed, keyed.dropFirst()) where position[earlier]! > position[later]! {
                    outOfOrder.append(later)
                }
            }
            if !outOfOrder.isEmpty {
                var failure = fail("messages of one key arrived out of publish order")
                failure.outOfOrder = outOfOrder
                throw failure
            }
            return "\(total) messages over 16 keys in publish order per key, \(consumers) competing consumer(s)"
        }
    }

    // 10
    func groupsFanOut() async throws -> String {
        try await withTransport { transport in
            let topic = name("topic")
            let groups = [name("group-a"), name("group-b")]
            var members: [[Subscription]] = []
            for group in groups {
                members.append([
                    try await transport.subscribe(to: topic, group: group), try await transport.subscribe(to: topic, group: group),
                ])
            }
            let sent = envelopes(50, "event")
            let expected = Set(sent.map(\.id))
            async let first = read(members[0], expecting: expected)
            async let second = read(members[1], expecting: expected)
            try await transport.publish(sent, to: topic)
            let results = try await [first, second]
            for (index, received) in results.enumerated() {
                try expectAll(sent, in: received, "group \(groups[index])")
                let both = received.ids(ackedBy: 0).intersection(received.ids(ackedBy: 1))
                if !both.isEmpty {
                    var failure = fail("group \(groups[index]): messages went to both of its consumers")
                    failure.extra = both.sorted()
                    throw failure
                }
            }
            let split = results.map { "\($0.ids(ackedBy: 0).count)/\($0.ids(ackedBy: 1).count)" }.joined(separator: " and ")
            return "each of 2 groups got all 50 events, split \(split) between its 2 consumers"
        }
    }

    // 11
    func commandsGoToExactlyOne() async throws -> String {
        let total = count(full: 1000, short: 100)
        return try await withTransport { transport in
            let queue = name("queue")
            var consumers: [Subscription] = []
            for _ in 0..<3 { consumers.append(try await transport.consume(queue: queue)) }
            let sent = envelopes(total, "command")
            async let reading = read(consumers, expecting: Set(sent.map(\.id)))
            try await transport.send(sent, to: queue)
            let received = try await reading
            try expectAll(sent, in: received, "commands to 3 competing consumers")
            var twice = Set<String>()
            for a in 0..<3 {
                for b in (a + 1)..<3 { twice.formUnion(received.ids(ackedBy: a).intersection(received.ids(ackedBy: b))) }
            }
            if !twice.isEmpty {
                var failure = fail("commands were handled by more than one consumer")
                failure.extra = twice.sorted()
                throw failure
            }
            let split = (0..<3).map { String(received.ids(ackedBy: $0).count) }.joined(separator: "/")
            return "\(total) commands each handled by exactly one of 3 consumers (\(split))"
        }
    }

    // 12
    func commandsWaitForTheirConsumer() async throws -> String {
        try await withTransport { transport in
            let queue = name("queue")
            let sent = envelopes(50, "command")
            try await transport.send(sent, to: queue)
            let received = try await read([try await transport.consume(queue: queue)], expecting: Set(sent.map(\.id)))
            try expectAll(sent, in: received, "commands sent before any consumer existed")
            return "50 commands sent before any consumer existed, all delivered once one started"
        }
    }

    // 13
    func publisherClose() async throws -> String {
        let total = count(full: 10_000, short: 100)
        return try await withTransport { reader in
            let topic = name("topic")
            let subscription = try await reader.subscribe(to: topic, group: name("group"))
            let sent = envelopes(total, "event")
            async let reading = read([subscription], expecting: Set(sent.map(\.id)))
            let publisher = try await suite.makeTransport()
            try await publishConcurrently(sent, publishers: 20, to: topic, on: publisher)
            try await publisher.shutdown()
            let received = try await reading
            try expectAll(sent, in: received, "published by 20 publishers before their transport shut down")
            return "\(total) messages from 20 publishers, publisher transport shut down, none lost, \(received.duplicates) duplicates"
        }
    }

    // 14
    func topicsAreIsolated() async throws -> String {
        try await withTransport { transport in
            let topics = [name("topic-a"), name("topic-b")]
            var subscriptions: [Subscription] = []
            for topic in topics { subscriptions.append(try await transport.subscribe(to: topic, group: name("group"))) }
            let sent = topics.map { envelopes(1, $0) }
            for (topic, messages) in zip(topics, sent) { try await transport.publish(messages, to: topic) }
            for index in 0..<2 {
                let received = try await read([subscriptions[index]], expecting: Set(sent[index].map(\.id)))
                try expectAll(sent[index], in: received, "topic \(topics[index])")
            }
            return "one message on each of two topics arrived only on its own"
        }
    }

    // 15
    func deadLetter() async throws -> String {
        try await withTransport { transport in
            let topic = name("topic")
            let group = name("group")
            let options = SubscriptionOptions(maxDeliveryAttempts: 2)
            let subscription = try await transport.subscribe(to: topic, group: group, options: options)
            let sent = envelopes(3, "event")
            let (explicit, exhausted, fine) = (sent[0].id, sent[1].id, sent[2].id)
            let reason = "conformance: rejected explicitly"
            try await transport.publish(sent, to: topic)
            let received = try await read([subscription], expecting: [fine]) { delivery, _ in
                switch delivery.envelope.id {
                case explicit: .deadLetter(reason)
                case exhausted: .nack(.zero)
                default: .ack
                }
            }
            try expectAll([sent[2]], in: received, "the group after dead-lettering")

            let origin = DeliveryOrigin.topic(topic, group: group)
            let deadLetters = try await read(
                [try await transport.consume(queue: transport.deadLetterQueue(for: origin))],
                expecting: [explicit, exhausted]
            )
            try expectAll(Array(sent[0...1]), in: deadLetters, "the dead-letter queue \(transport.deadLetterQueue(for: origin))")
            let first = deadLetters.arrival(explicit)!.envelope.headers
            let second = deadLetters.arrival(exhausted)!.envelope.headers
            try check(
                first[CourierHeader.deadLetterReason] == reason,
                "dead letter reason is \(first[CourierHeader.deadLetterReason] ?? "missing"), expected \(reason)")
            try check(!(second[CourierHeader.deadLetterReason] ?? "").isEmpty, "the exhausted message has no dead-letter reason")
            try check(
                first[CourierHeader.deadLetterAttempts] == "1",
                "explicit dead letter has attempts header \(first[CourierHeader.deadLetterAttempts] ?? "missing"), expected 1")
            try check(
                second[CourierHeader.deadLetterAttempts] == "2",
                "exhausted dead letter has attempts header \(second[CourierHeader.deadLetterAttempts] ?? "missing"), expected 2")
            for headers in [first, second] {
                try check(
                    headers[CourierHeader.deadLetterOriginKind] == "topic",
                    "dead letter origin kind is \(headers[CourierHeader.deadLetterOriginKind] ?? "missing")")
                try check(
                    headers[CourierHeader.deadLetterOrigin] == topic,
                    "dead letter origin is \(headers[CourierHeader.deadLetterOrigin] ?? "missing"), expected \(topic)")
                try check(
                    headers[CourierHeader.deadLetterGroup] == group,
                    "dead letter group is \(headers[CourierHeader.deadLetterGroup] ?? "missing"), expected \(group)")
            }

            // Neither is seen again by the group.
            let marker = envelopes(1, "marker")
            try await transport.publish(marker, to: topic)
            let again = try await read([try await transport.subscribe(to: topic, group: group)], expecting: Set(marker.map(\.id)))
            try expectAll(marker, in: again, "the group after its dead letters")

            // Commands too.
            let queue = name("queue")
            let command = envelopes(1, "command")
            try await transport.send(command, to: queue)
            _ = try await read([try await transport.consume(queue: queue)], expecting: [], limit: 1) { _, _ in
                .deadLetter("conformance: bad command")
            }
            let queueDead = try await read(
                [try await transport.consume(queue: transport.deadLetterQueue(for: .queue(queue)))],
                expecting: Set(command.map(\.id))
            )
            try expectAll(command, in: queueDead, "the dead-letter queue of a command queue")
            let headers = queueDead.arrival(command[0].id)!.envelope.headers
            try check(
                headers[CourierHeader.deadLetterOriginKind] == "queue" && headers[CourierHeader.deadLetterOrigin] == queue,
                "command dead letter has origin \(headers[CourierHeader.deadLetterOriginKind] ?? "?") \(headers[CourierHeader.deadLetterOrigin] ?? "?")"
            )
            return "explicit and exhausted dead letters carry reason, attempts and origin; the group never saw them again; commands too"
        }
    }

    // 16
    func consumerDiesBeforeAck() async throws -> String {
        try await withTransport { survivor in
            let topic = name("topic")
            let group = name("group")
            let doomed = try await suite.makeTransport()
            let dying = try await doomed.subscribe(to: topic, group: group)
            let sent = envelopes(20, "event")
            try await survivor.publish(sent, to: topic)
            let inbox = Inbox(dying)
            var taken = 0
            while try await inbox.next(within: .milliseconds(500)) != nil { taken += 1 }
            inbox.stop()
            try check(taken > 0, "the doomed consumer received nothing, so the scenario proves nothing")
            try await doomed.shutdown()
            let received = try await read([try await survivor.subscribe(to: topic, group: group)], expecting: Set(sent.map(\.id)))
            try expectAll(sent, in: received, "after a consumer stopped without acking")
            return "a consumer died holding \(taken) un-acked messages; the next consumer got all 20"
        }
    }

    // 17
    func reconnect(restart: @escaping @Sendable () async throws -> Void) async throws -> String {
        let total = count(full: 10_000, short: 1000)
        return try await withTransport { reader in
            let topic = name("topic")
            let subscription = try await reader.subscribe(to: topic, group: name("group"))
            let sent = envelopes(total, "event")
            let confirmed = Locked(0)
            let retries = Locked(0)
            // A broker restart is the transient failure every transport meets: what a publish
            // throws meanwhile must say that trying again may succeed.
            let notRetriable = Locked<[String]>([])
            async let reading = read([subscription], expecting: Set(sent.map(\.id)), idle: .seconds(60))
            let publisher = try await suite.makeTransport()
            try await withThrowingTaskGroup(of: Void.self) { group in
                for worker in 0..<100 {
                    group.addTask {
                        for index in stride(from: worker, to: total, by: 100) {
                            let deadline = ContinuousClock.now + .seconds(120)
                            while true {
                                do {
                                    try await publisher.publish(sent[index], to: topic)
                                    confirmed.withLock { $0 += 1 }
                                    break
                                } catch  where ContinuousClock.now < deadline {
                                    retries.withLock { $0 += 1 }
                                    if (error as? CourierError)?.isRetriable != true {
                                        notRetriable.withLock { $0.append("\(error)") }
                                    }
                                    try await Task.sleep(for: .milliseconds(200))
                                }
                            }
                        }
                    }
                }
                group.addTask {
                    for fraction in [3, 3 * 2] {
                        while confirmed.withLock({ $0 }) < total * fraction / 9 { try await Task.sleep(for: .milliseconds(10)) }
                        try await restart()
                    }
                }
                try await group.waitForAll()
            }
            try await publisher.shutdown()
            let received = try await reading
            try expectAll(sent, in: received, "across two broker restarts")
            let unmarked = notRetriable.withLock { $0 }
            try check(
                unmarked.isEmpty,
                "\(unmarked.count) publishes failed during a broker restart with errors not marked retriable, e.g. \(unmarked.first ?? "")")
            return
                "\(total) messages from 100 publishers across 2 broker restarts, all confirmed ones arrived (\(retries.withLock { $0 }) publish retries, each error retriable; \(received.duplicates) duplicates)"
        }
    }

    // 18
    func lateGroupReadsHistory() async throws -> String {
        try await withTransport { transport in
            let topic = name("topic")
            let history = envelopes(50, "history")
            try await transport.publish(history, to: topic)
            let group = name("late-group")
            let early = try await transport.subscribe(to: topic, group: group, options: SubscriptionOptions(startPosition: .earliest))
            let first = try await read([early], expecting: Set(history.map(\.id)))
            try expectAll(history, in: first, "a late group starting at earliest")

            try await transport.rewind(topic: topic, group: group, to: .earliest)
            let replay = try await read([try await transport.subscribe(to: topic, group: group)], expecting: Set(history.map(\.id)))
            try expectAll(history, in: replay, "the group rewound to earliest")

            try await Task.sleep(for: .milliseconds(1100))
            let cut = Date()
            try await Task.sleep(for: .milliseconds(100))
            let recent = envelopes(10, "recent")
            try await transport.publish(recent, to: topic)
            let fromTime = try await transport.subscribe(
                to: topic, group: name("time-group"), options: SubscriptionOptions(startPosition: .timestamp(cut)))
            let timed = try await read([fromTime], expecting: Set(recent.map(\.id)))
            try expectAll(recent, in: timed, "a group starting at a timestamp")
            return "a late group read 50 earlier events, a rewind replayed them, a timestamp start read only the 10 after it"
        }
    }

    // 19
    func headersAndKeysSurvive() async throws -> String {
        try await withTransport { transport in
            let topic = name("topic")
            let subscription = try await transport.subscribe(to: topic, group: name("group"))
            var headers: [String: String] = [
                CourierHeader.type: "conformance.HeadersSurvive.v2",
                CourierHeader.source: "/conformance/suite",
                CourierHeader.subject: "customer/42",
                CourierHeader.dataSchema: "https://example.com/schemas/headers.json",
                CourierHeader.contentType: "application/octet-stream",
                CourierHeader.correlationID: "correlation-1",
                CourierHeader.causationID: "causation-1",
                CourierHeader.traceParent: "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
                CourierHeader.traceState: "congo=t61rcWkgMzE",
            ]
            headers["x-user-non-ascii"] = "grüße, 東京, 🚀"
            headers["x-user-empty"] = ""
            headers["x-user-spaces"] = "  spaced  out  "
            let full = Envelope(payload: Array(0...255), headers: headers, key: "ключ-1 🔑")
            let bare = Envelope(payload: [])
            try await transport.publish([full, bare], to: topic)
            let received = try await read([subscription], expecting: [full.id, bare.id])
            try expectAll([full, bare], in: received, "headers and keys")
            for sent in [full, bare] {
                let got = received.arrival(sent.id)!.envelope
                try check(
                    got.payload == sent.payload, "message \(sent.id): payload of \(got.payload.count) bytes, sent \(sent.payload.count)")
                try check(got.headers == sent.headers, "message \(sent.id): headers \(got.headers), sent \(sent.headers)")
                try check(got.key == sent.key, "message \(sent.id): key \(got.key ?? "nil"), sent \(sent.key ?? "nil")")
                let drift = abs(got.timestamp.timeIntervalSince(sent.timestamp))
                try check(drift < 0.001, "message \(sent.id): timestamp off by \(drift) s")
            }
            return "\(headers.count) headers (well-known, non-ASCII, empty), binary payload, key and timestamp arrived unchanged"
        }
    }

    // 20
    func badInput(_ capabilities: TransportCapabilities) async throws -> String {
        let topic = name("topic")
        let group = name("group")
        let sent = envelopes(10, "confirmed")
        var checked = 0
        try await withTransport { transport in
            _ = try await transport.subscribe(to: topic, group: group).close()
            try await transport.publish(sent, to: topic)
            let badNames = [
                "", "has space", "slash/name", "colon:name", String(repeating: "x", count: 300), "amq.reserved", "..", "ümlaut",
            ]
            for bad in badNames {
                try await expectError(.invalidName, "publishing to \"\(bad)\"") {
                    try await transport.publish(Envelope(text: "x"), to: bad)
                }
                try await expectError(.invalidName, "sending to \"\(bad)\"") { try await transport.send(Envelope(text: "x"), to: bad) }
                try await expectError(.invalidName, "consuming \"\(bad)\"") { _ = try await transport.consume(queue: bad) }
                try await expectError(.invalidName, "subscribing as group \"\(bad)\"") {
                    _ = try await transport.subscribe(to: topic, group: bad)
                }
                checked += 4
            }
            let oversized = Envelope(payload: [UInt8](repeating: 0x2A, count: capabilities.maxPayloadSize + 1))
            try await expectError(.payloadTooLarge, "publishing \(oversized.payload.count) bytes") {
                try await transport.publish(oversized, to: topic)
            }
            try await expectError(.payloadTooLarge, "sending \(oversized.payload.count) bytes") {
                try await transport.send(oversized, to: name("queue"))
            }
            checked += 2
        }
        let closed = try await suite.makeTransport()
        try await closed.shutdown()
        try await expectError(.transportClosed, "publishing on a shut-down transport") {
            try await closed.publish(Envelope(text: "x"), to: topic)
        }
        try await expectError(.transportClosed, "sending on a shut-down transport") {
            try await closed.send(Envelope(text: "x"), to: topic)
        }
        try await expectError(.transportClosed, "subscribing on a shut-down transport") {
            _ = try await closed.subscribe(to: topic, group: group)
        }
        checked += 3
        let received = try await withTransport { transport in
            try await read([try await transport.subscribe(to: topic, group: group)], expecting: Set(sent.map(\.id)))
        }
        try expectAll(sent, in: received, "messages confirmed before the bad input")
        return
            "\(checked) bad calls gave typed errors (invalid names, oversized payloads, closed transport); the 10 confirmed messages all arrived"
    }

    private func expectError(_ code: CourierError.Code, _ what: String, _ body: () async throws -> Void) async throws {
        do {
            try await body()
        } catch let error as CourierError {
            try check(error.code == code, "\(what) threw \(error.code) (\(error.message)), expected \(code)")
            try check(!error.message.isEmpty, "\(what) threw an error without a message")
            // Bad input is a caller's mistake: the same call can never succeed later.
            try check(!error.isRetriable, "\(what) threw \(error.code) marked retriable; bad input must not be retried")
            return
        } catch {
            throw fail("\(what) threw \(type(of: error)) \(error), expected CourierError \(code)")
        }
        throw fail("\(what) succeeded, expected CourierError \(code)")
    }
}
