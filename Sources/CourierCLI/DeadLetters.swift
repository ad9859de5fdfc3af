import ArgumentParser
import Courier
import Foundation

/// `courier dead-letters list|show|replay`: what was dead-lettered from a group or queue, and
/// sending chosen messages back.
struct DeadLetters: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "dead-letters",
        abstract: "List, inspect and replay the dead letters of a group or a queue.",
        discussion: """
            A group's or queue's dead letters wait in its dead-letter queue (T.G.dead-letter, \
            Q.dead-letter) with the reason, attempts, origin and time in headers.

            Examples:
              courier dead-letters list --queue create-customer --transport amqp://localhost
              courier dead-letters show 0F8E2C4B-9D1A-4C7E-8B2F-3A6D5E4C1B0A --queue create-customer
              courier dead-letters replay --all --topic customers --group audit
              courier dead-letters replay 0F8E2C4B-9D1A-4C7E-8B2F-3A6D5E4C1B0A --queue create-customer
            """,
        subcommands: [List.self, Show.self, Replay.self]
    )

    struct List: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "List dead letters without taking them: id, time, attempts, type and reason."
        )
        @OptionGroup var transportOptions: TransportOptions
        @OptionGroup var origin: OriginOptions
        @Option(help: "List at most this many.") var limit: Int = 100
        @Flag(help: "Print each dead letter as one line of JSON (id, time, headers, payload).") var json = false

        func validate() throws {
            try NumericOptions.atLeastOne(limit, "--limit", maximum: 1_000_000)
        }

        func run() async throws {
            let origin = try origin.origin()
            try await transportOptions.connect().withShutdown { transport in
                let queue = transport.deadLetterQueue(for: origin)
                let letters = try await transport.browse(queue: queue, limit: limit)
                if json {
                    for letter in letters { print(DeadLetterFormat.json(letter)) }
                } else {
                    print(
                        "\(letters.count) dead letter\(letters.count == 1 ? "" : "s") of \(origin) in \(queue)\(letters.count == limit ? " (--limit reached)" : "")"
                    )
                    for letter in letters { print(DeadLetterFormat.line(letter)) }
                }
            }
        }
    }

    struct Show: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Print dead letters in full: every header and the payload (pretty JSON when the content type says JSON)."
        )
        @OptionGroup var transportOptions: TransportOptions
        @OptionGroup var origin: OriginOptions
        @Argument(help: "The ids of the dead letters to show.") var ids: [String]
        @Option(help: "Search at most this many dead letters.") var limit: Int = 10_000

        func validate() throws {
            guard !ids.isEmpty else { throw ValidationError("give the id of at least one dead letter (see dead-letters list)") }
            try NumericOptions.atLeastOne(limit, "--limit", maximum: 1_000_000)
        }

        func run() async throws {
            let origin = try origin.origin()
            try await transportOptions.connect().withShutdown { transport in
                let queue = transport.deadLetterQueue(for: origin)
                let letters = try await transport.browse(queue: queue, limit: limit)
                let byID = Dictionary(letters.map { ($0.id, $0) }, uniquingKeysWith: { first, _ in first })
                for id in ids {
                    guard let letter = byID[id] else { continue }
                    print(DeadLetterFormat.full(letter))
                }
                let missing = ids.filter { byID[$0] == nil }
                if !missing.isEmpty {
                    throw CourierError(.notFound, "no dead letter \(missing.joined(separator: ", ")) in \(queue)")
                }
            }
        }
    }

    struct Replay: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Send dead letters back to their group or queue, for its consumers only; the rest stay dead-lettered.",
            discussion: """
                A replayed message keeps its id, payload and headers, loses the dead-letter \
                headers, and starts again at attempt 1. Dead letters not chosen stay in the \
                dead-letter queue (moved behind the others). Kafka puts a group's messages back \
                through the group's retry topic, so it needs retry_topics=true for topics; \
                queues work everywhere.
                """
        )
        @OptionGroup var transportOptions: TransportOptions
        @OptionGroup var origin: OriginOptions
        @Argument(help: "The ids of the dead letters to replay.") var ids: [String] = []
        @Flag(help: "Replay every dead letter.") var all = false

        func validate() throws {
            guard all != !ids.isEmpty else { throw ValidationError("give the ids of the dead letters to replay, or --all") }
        }

        func run() async throws {
            let origin = try origin.origin()
            try await transportOptions.connect().withShutdown { transport in
                let queue = transport.deadLetterQueue(for: origin)
                let present = Set(try await transport.browse(queue: queue, limit: 1_000_000).map(\.id))
                let chosen = Set(ids)
                let missing = chosen.subtracting(present)
                let (replayed, kept) =
                    all || !chosen.isSubset(of: missing)
                    ? try await transport.replayDeadLetters(of: origin) { all || chosen.contains($0.id) }
                    : (0, 0)
                print("replayed \(replayed) dead letter\(replayed == 1 ? "" : "s") to \(origin); \(kept) kept in \(queue)")
                if !missing.isEmpty {
                    throw CourierError(.notFound, "no dead letter \(missing.sorted().joined(separator: ", ")) in \(queue)")
                }
            }
        }
    }
}

/// `--queue`, or `--topic` with `--group`.
struct OriginOptions: ParsableArguments {
    @Option(help: "The queue whose dead letters to read.") var queue: String?
    @Option(help: "The topic (with --group) whose group's dead letters to read.") var topic: String?
    @Option(help: "The subscription group (with --topic).") var group: String?

    func validate() throws {
        switch (queue, topic, group) {
        case (.some, nil, nil), (nil, .some, .some): break
        default: throw ValidationError("give --queue QUEUE, or --topic TOPIC with --group GROUP")
        }
    }

    func origin() throws -> DeliveryOrigin {
        if let queue {
            try DestinationName.validate(queue, as: .queue)
            return .queue(queue)
        }
        try DestinationName.validate(topic!, as: .topic)
        try DestinationName.validate(group!, as: .group)
        return .topic(topic!, group: group!)
    }
}

/// How dead letters are printed.
enum DeadLetterFormat {
    static func line(_ letter: Envelope) -> String {
        let headers = letter.headers
        let reason = headers[CourierHeader.deadLetterReason] ?? "-"
        let shown = reason.count > 100 ? String(reason.prefix(99)) + "…" : reason
        return [
            letter.id,
            headers[CourierHeader.deadLetterTime] ?? RFC3339.string(from: letter.timestamp),
            "attempts \(headers[CourierHeader.deadLetterAttempts] ?? "?")",
            letter.type ?? "-",
            shown,
        ].joined(separator: "  ")
    }

    static func full(_ letter: Envelope) -> String {
        var lines = ["--- \(letter.id)"]
        if let key = letter.key { lines.append("key: \(key)") }
        lines.append("time: \(RFC3339.string(from: letter.timestamp))")
        for (name, value) in letter.headers.sorted(by: { $0.key < $1.key }) { lines.append("\(name): \(value)") }
        lines.append("")
        lines.append(MessagePrinter.payloadText(letter))
        return lines.joined(separator: "\n")
    }

    static func json(_ letter: Envelope) -> String {
        var object: [String: Any] = [
            "id": letter.id,
            "time": RFC3339.string(from: letter.timestamp),
            "headers": letter.headers,
        ]
        object.merge(MessagePrinter.payloadFields(letter.payload)) { $1 }
        if let key = letter.key { object["key"] = key }
        let data = (try? JSONSerialization.data(withJSONObject: object, options: [.sortedKeys])) ?? Data("{}".utf8)
        return String(decoding: data, as: UTF8.self)
    }
}
