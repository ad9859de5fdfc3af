import ArgumentParser
import Courier
import Foundation

/// Exit codes the message commands use, for scripts.
enum ToolExit {
    /// `consume`/`tail` stopped at `--timeout` before `--count` messages arrived.
    static let incomplete = ExitCode(3)
}

/// What a message looks like on the command line: payload, key, headers.
struct MessageOptions: ParsableArguments {
    @Option(
        help: "A file with one message per line ('-' for standard input). Without a message argument or --file, standard input is read.")
    var file: String?

    @Option(help: "The partition key of every message.")
    var key: String?

    @Option(name: .customLong("header"), help: "A header, NAME=VALUE; repeat for more.")
    var headers: [String] = []

    @Option(help: "The content type header (CourierHeader.contentType), e.g. application/json.")
    var contentType: String?

    /// The envelopes for `message` (one), or the lines of `--file` or standard input.
    func envelopes(_ message: String?) throws -> [Envelope] {
        var headerValues: [String: String] = [:]
        for header in headers {
            guard let equals = header.firstIndex(of: "="), equals != header.startIndex else {
                throw ValidationError("--header takes NAME=VALUE; got '\(header)'")
            }
            headerValues[String(header[..<equals])] = String(header[header.index(after: equals)...])
        }
        if let contentType { headerValues[CourierHeader.contentType] = contentType }
        let payloads: [String]
        if let message {
            guard file == nil else { throw ValidationError("give a message argument or --file, not both") }
            payloads = [message]
        } else if let file, file != "-" {
            guard let text = FileManager.default.contents(atPath: file).map({ String(decoding: $0, as: UTF8.self) }) else {
                throw ValidationError("cannot read --file \(file)")
            }
            payloads = text.split(separator: "\n", omittingEmptySubsequences: true).map(String.init)
        } else {
            var lines: [String] = []
            while let line = readLine(strippingNewline: true) {
                if !line.isEmpty { lines.append(line) }
            }
            payloads = lines
        }
        return payloads.map { Envelope(payload: Array($0.utf8), headers: headerValues, key: key) }
    }
}

extension TransportOptions {
    /// Connects, runs `body`, and shuts the transport down whether `body` throws or not.
    func withTransport<T: Sendable>(_ body: (any Transport) async throws -> T) async throws -> T {
        try await connect().withShutdown { try await body($0) }
    }
}

/// `courier publish`: events to a topic.
struct Publish: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Publish events to a topic: every group subscribed to it gets a copy.",
        discussion: """
            Prints the id of each confirmed event, one per line. Exit status 0 once all are \
            confirmed, 1 on an error (printed on standard error).

            Examples:
              courier publish customers '{"id":1}' --content-type application/json
              courier publish customers --file events.txt --key customer-1
              printf 'one\\ntwo\\n' | courier publish customers --transport amqp://localhost
            """
    )

    @OptionGroup var transportOptions: TransportOptions
    @Argument(help: "The topic.") var topic: String
    @Argument(help: "The event payload; omit to read --file or standard input, one event per line.") var message: String?
    @OptionGroup var messageOptions: MessageOptions

    func run() async throws {
        let envelopes = try messageOptions.envelopes(message)
        try await transportOptions.withOneShotTransport { try await $0.publish(envelopes, to: topic) }
        for envelope in envelopes { print(envelope.id) }
    }
}

/// `courier send`: commands to a queue.
struct Send: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Send commands to a queue: exactly one consumer handles each.",
        discussion: """
            Prints the id of each confirmed command, one per line. Exit status 0 once all are \
            confirmed, 1 on an error (printed on standard error).

            Examples:
              courier send create-customer '{"name":"Ada"}' --content-type application/json
              courier send create-customer --file commands.txt
            """
    )

    @OptionGroup var transportOptions: TransportOptions
    @Argument(help: "The queue.") var queue: String
    @Argument(help: "The command payload; omit to read --file or standard input, one command per line.") var message: String?
    @OptionGroup var messageOptions: MessageOptions

    func run() async throws {
        let envelopes = try messageOptions.envelopes(message)
        try await transportOptions.withOneShotTransport { try await $0.send(envelopes, to: queue) }
        for envelope in envelopes { print(envelope.id) }
    }
}

/// How `consume` settles what it prints.
enum Settlement: String, ExpressibleByArgument, CaseIterable {
    case ack, nack, leave
}

/// Reading options shared by `consume` and `tail`.
struct ReadOptions: ParsableArguments {
    @Option(help: "Stop after this many messages.")
    var count: Int?

    @Option(help: "Stop when no message arrives for this many seconds (exit status 3 if --count was not reached).")
    var timeout: Double?

    @Flag(
        help:
            "Print each message as one line of JSON (id, attempt, key, time, headers, payload; a payload that is not UTF-8 is base64 with \"payloadEncoding\":\"base64\")."
    )
    var json = false

    func validate() throws {
        try NumericOptions.atLeastOne(count, "--count")
        try NumericOptions.seconds(timeout, "--timeout")
    }

    /// `--timeout` as a duration (validated).
    var idleLimit: Duration? { timeout.flatMap(NumericOptions.duration) }
}

/// Checks of numeric options, shared by every command: NaN, infinities, negative and huge
/// values are usage errors (exit status 64) with a message, never a crash.
enum NumericOptions {
    /// The longest duration any option takes: one year.
    static let maximumSeconds: Double = 365 * 86_400

    static func atLeastOne(_ value: Int?, _ name: String, maximum: Int = Int.max) throws {
        guard let value else { return }
        guard value >= 1, value <= maximum else {
            throw ValidationError("\(name) is \(value); it must be a whole number from 1\(maximum == Int.max ? " up" : " to \(maximum)")")
        }
    }

    /// `seconds` as a duration when it is a finite number above 0 and at most a year.
    static func duration(_ seconds: Double) -> Duration? {
        Duration.checkedSeconds(seconds, maximum: maximumSeconds).flatMap { $0 > .zero ? $0 : nil }
    }

    /// Checks that `value`, if given, is a ``duration(_:)``.
    static func seconds(_ value: Double?, _ name: String) throws {
        guard let value, duration(value) == nil else { return }
        throw ValidationError("\(name) is \(value); it must be a number of seconds above 0 and at most \(Int(maximumSeconds)) (a year)")
    }

    /// A rate in messages per second: finite, at least 0.001, at most 100 million.
    static func rate(_ value: Double?, _ name: String) throws {
        guard let value else { return }
        guard value.isFinite, value >= 0.001, value <= 100_000_000 else {
            throw ValidationError("\(name) is \(value); it must be a number of messages per second from 0.001 to 100000000")
        }
    }
}

/// `courier consume`: read a queue, or a topic as a group.
struct Consume: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Consume a queue, or subscribe to a topic as a group, and print the messages.",
        discussion: """
            Each message is printed with its id, attempt, key, time and headers, then its \
            payload (pretty-printed when its content type is JSON). With --json, one JSON \
            object per line instead. Messages are acked after printing (--settle ack), returned \
            for redelivery (nack), or left un-acked to go back when the tool exits (leave).
            Exit status: 0 when --count messages arrived (or on --timeout without --count), \
            3 on --timeout before --count, 1 on an error.

            Examples:
              courier consume --queue create-customer --count 10
              courier consume --topic customers --group audit --start earliest --json
              courier consume --queue create-customer --settle leave --timeout 5
            """
    )

    @OptionGroup var transportOptions: TransportOptions
    @Option(help: "The queue to consume.") var queue: String?
    @Option(help: "The topic to subscribe to (with --group).") var topic: String?
    @Option(help: "The subscription group (with --topic).") var group: String?
    @Option(help: "Where a new group starts: latest or earliest.") var start: String = "latest"
    @Option(help: "What to do with each message after printing it: ack, nack or leave.") var settle: Settlement = .ack
    @OptionGroup var readOptions: ReadOptions

    func validate() throws {
        switch (queue, topic, group) {
        case (.some, nil, nil), (nil, .some, .some): break
        default: throw ValidationError("give --queue QUEUE, or --topic TOPIC with --group GROUP")
        }
        guard ["latest", "earliest"].contains(start) else { throw ValidationError("--start is latest or earliest") }
    }

    func run() async throws {
        let options = SubscriptionOptions(startPosition: start == "earliest" ? .earliest : .latest)
        let (queue, topic, group, settle, readOptions) = (queue, topic, group, settle, readOptions)
        let complete = try await transportOptions.withTransport { transport in
            let subscription =
                if let queue {
                    try await transport.consume(queue: queue, options: options)
                } else {
                    try await transport.subscribe(to: topic!, group: group!, options: options)
                }
            return try await MessagePrinter(options: readOptions).read(subscription, settle: settle)
        }
        if !complete { throw ToolExit.incomplete }
    }
}

/// `courier tail`: follow a topic without disturbing its groups.
struct Tail: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Follow a topic: print its events as they are published, without joining any existing group.",
        discussion: """
            Subscribes as a fresh group of its own (courier-tail-<random>), so every existing \
            group keeps all its messages. Runs until interrupted, --count or --timeout.

            Examples:
              courier tail customers
              courier tail customers --start earliest --count 20 --json
            """
    )

    @OptionGroup var transportOptions: TransportOptions
    @Argument(help: "The topic.") var topic: String
    @Option(help: "Where to start: latest (new events only) or earliest (what the transport retains).") var start: String = "latest"
    @OptionGroup var readOptions: ReadOptions

    func validate() throws {
        guard ["latest", "earliest"].contains(start) else { throw ValidationError("--start is latest or earliest") }
    }

    func run() async throws {
        let group = "courier-tail-\(MessageID.random().prefix(8).lowercased())"
        let options = SubscriptionOptions(startPosition: start == "earliest" ? .earliest : .latest)
        let (topic, readOptions) = (topic, readOptions)
        let complete = try await transportOptions.withTransport { transport in
            let subscription = try await transport.subscribe(to: topic, group: group, options: options)
            FileHandle.standardError.write(Data("tailing \(topic) as group \(group)\n".utf8))
            return try await MessagePrinter(options: readOptions).read(subscription, settle: .ack)
        }
        if !complete { throw ToolExit.incomplete }
    }
}

/// Prints deliveries as `consume` and `tail` show them.
struct MessagePrinter {
    let options: ReadOptions

    /// Reads until `--count`, `--timeout` of silence, or the end of the subscription; returns
    /// whether `--count` (if any) was reached.
    func read(_ subscription: Subscription, settle: Settlement) async throws -> Bool {
        let received = Counter()
        let finished = Counter()
        let (json, count) = (options.json, options.count)
        let reader = Task {
            defer { _ = finished.increment() }
            for try await delivery in subscription {
                print(json ? Self.json(delivery) : Self.text(delivery))
                fflush(nil)
                switch settle {
                case .ack: try await delivery.ack()
                case .nack: try await delivery.nack()
                case .leave: break
                }
                if received.increment() == count { break }
            }
        }
        if let idleLimit = options.idleLimit {
            // Idle timeout: stop once nothing has arrived for `timeout` seconds.
            var last = received.value
            var lastChange = ContinuousClock.now
            while finished.value == 0 {
                try await Task.sleep(for: .milliseconds(50))
                if received.value != last {
                    last = received.value
                    lastChange = .now
                } else if ContinuousClock.now - lastChange >= idleLimit {
                    break
                }
            }
            await subscription.close()
        }
        try await reader.value
        await subscription.close()
        return count.map { received.value >= $0 } ?? true
    }

    static func text(_ delivery: Delivery) -> String {
        let envelope = delivery.envelope
        var lines = ["--- \(envelope.id) attempt \(delivery.attempt) from \(delivery.origin)"]
        if let key = envelope.key { lines.append("key: \(key)") }
        lines.append("time: \(RFC3339.string(from: envelope.timestamp))")
        for (name, value) in envelope.headers.sorted(by: { $0.key < $1.key }) { lines.append("\(name): \(value)") }
        lines.append("")
        lines.append(payloadText(envelope))
        return lines.joined(separator: "\n")
    }

    /// The payload as text: pretty-printed JSON when the content type says JSON.
    static func payloadText(_ envelope: Envelope) -> String {
        if envelope.headers[CourierHeader.contentType]?.contains("json") == true,
            let object = try? JSONSerialization.jsonObject(with: Data(envelope.payload), options: [.fragmentsAllowed]),
            let pretty = try? JSONSerialization.data(withJSONObject: object, options: [.prettyPrinted, .sortedKeys, .fragmentsAllowed])
        {
            return String(decoding: pretty, as: UTF8.self)
        }
        return String(decoding: envelope.payload, as: UTF8.self)
    }

    /// `payload` as UTF-8 text when it is valid UTF-8; otherwise losslessly as base64, with
    /// `"payloadEncoding": "base64"` saying so.
    static func payloadFields(_ payload: [UInt8]) -> [String: Any] {
        if let text = String(validating: payload, as: UTF8.self) { return ["payload": text] }
        return ["payload": Data(payload).base64EncodedString(), "payloadEncoding": "base64"]
    }

    static func json(_ delivery: Delivery) -> String {
        let envelope = delivery.envelope
        var object: [String: Any] = [
            "id": envelope.id,
            "attempt": delivery.attempt,
            "origin": delivery.origin.description,
            "time": RFC3339.string(from: envelope.timestamp),
            "headers": envelope.headers,
        ]
        object.merge(payloadFields(envelope.payload)) { $1 }
        if let key = envelope.key { object["key"] = key }
        let data = (try? JSONSerialization.data(withJSONObject: object, options: [.sortedKeys])) ?? Data("{}".utf8)
        return String(decoding: data, as: UTF8.self)
    }
}
