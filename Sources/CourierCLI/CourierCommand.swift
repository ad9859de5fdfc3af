import ArgumentParser
import Configuration
import Courier
import CourierTransports
import Logging
import Synchronization

@main
struct CourierCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "courier",
        abstract: "Message-based integration for Swift: events and commands over RabbitMQ, Kafka or memory.",
        discussion: """
            Every command takes a transport URL with --transport (default: the \
            COURIER_TRANSPORT_URL environment variable, else memory://).

            Exit status: 0 on success, 1 on an error (printed on standard error with its \
            code), 3 when consume or tail stopped at --timeout before --count, 64 on bad usage.

            Examples:
              courier demo
              courier demo --customers 50
              courier send create-customer '{"name":"Ada"}' --transport amqp://localhost
              courier consume --queue create-customer --count 1 --transport amqp://localhost
              courier tail customers --transport kafka://localhost:9092
              courier dead-letters list --queue create-customer --transport amqp://localhost
              courier health --transport amqp://localhost
              courier bench --messages 1000000 --size 256 --publishers 4 --consumers 4
            """,
        subcommands: [
            Demo.self, Publish.self, Send.self, Consume.self, Tail.self, DeadLetters.self, Topology.self, Health.self, Bench.self,
            DemoService.self,
        ]
    )
}

/// The `--transport` option shared by every subcommand.
struct TransportOptions: ParsableArguments {
    @Option(name: .long, help: "Transport URL: memory://, amqp://user:pass@host:5672/vhost, kafka://host:9092.")
    var transport: String?

    @Option(
        name: .long,
        help:
            "Log level on standard error: trace, debug, info, notice, warning, error or critical (default: the COURIER_LOG_LEVEL environment variable, else warning)."
    )
    var logLevel: String?

    func validate() throws {
        try ToolLogging.bootstrap(logLevel)
    }

    /// The URL given, else `COURIER_TRANSPORT_URL` (read through swift-configuration's
    /// environment provider, as a service reads it), else `memory://`.
    var url: String {
        transport ?? ConfigReader(provider: EnvironmentVariablesProvider()).string(forKey: ConfigKey(Transports.defaultKey), isSecret: true)
            ?? "memory://"
    }

    /// The URL, parsed.
    func parsedURL() throws -> TransportURL {
        try TransportURL(url)
    }

    /// Connects the transport the URL names.
    func connect() async throws -> any Transport {
        try await TransportFactory.connect(url)
    }

    /// Runs `body` on a transport for a one-shot command (publish, send): on `memory://` the
    /// broker lives in this process and nothing consumes it before the tool exits, so a full
    /// queue can never drain. Such a queue rejects at once (``CourierError/Code/queueFull``
    /// naming its capacity) instead of applying back-pressure forever.
    func withOneShotTransport<T: Sendable>(_ body: (any Transport) async throws -> T) async throws -> T {
        var parsed = try parsedURL()
        if case .memory(var settings) = parsed {
            settings.configuration.overflow = .reject
            parsed = .memory(settings)
        }
        do {
            return try await Transports.connect(parsed).withShutdown { try await body($0) }
        } catch let error as CourierError where error.code == .queueFull {
            guard case .memory(let settings) = parsed else { throw error }
            throw CourierError(
                .queueFull,
                "memory:// lives in this process and nothing consumes it before courier exits, so a queue takes at most \(settings.configuration.queueCapacity) messages or \(settings.configuration.queueByteCapacity) payload bytes (options capacity and capacity_bytes), and nothing is kept once it exits. Use a broker URL (amqp://, kafka://) to keep messages beyond this command",
                underlying: error
            )
        }
    }
}

/// The tool's logging: every log line (the adapters', librdkafka's through them, the bus's)
/// goes to standard error at the level `--log-level` or `COURIER_LOG_LEVEL` chooses, so that
/// standard output carries only what the command prints.
enum ToolLogging {
    static let levels = Logger.Level.allCases.map(\.rawValue)
    private static let done = Mutex(false)

    static func bootstrap(_ option: String?) throws {
        let fromEnvironment = ProcessEnvironment.value("COURIER_LOG_LEVEL")
        let text = option ?? fromEnvironment ?? "warning"
        guard let level = Logger.Level(rawValue: text.lowercased()) else {
            let source = option != nil ? "--log-level" : "COURIER_LOG_LEVEL"
            throw ValidationError("\(source) is '\(text)'; use one of \(levels.joined(separator: ", "))")
        }
        let first = done.withLock { done in
            defer { done = true }
            return !done
        }
        guard first else { return }
        LoggingSystem.bootstrap { label in
            var handler = StreamLogHandler.standardError(label: label)
            handler.logLevel = level
            return handler
        }
    }
}
