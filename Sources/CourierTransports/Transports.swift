import Configuration
import Courier
import CourierBus
import CourierKafka
import CourierRabbitMQ

/// Every transport Courier ships, chosen by URL: `memory://`, `amqp://`, `amqps://` or
/// `kafka://`. Link this module to let configuration alone decide the broker.
///
/// ```swift
/// import Configuration
/// import CourierTransports
///
/// // COURIER_TRANSPORT_URL=amqp://app:secret@rabbit:5672/shop
/// let config = ConfigReader(provider: EnvironmentVariablesProvider())
/// let bus = try await MessageBus.connect(config: config)
/// ```
public enum Transports {
    /// The configuration key of the transport URL, `courier.transport.url`: the environment
    /// variable `COURIER_TRANSPORT_URL` through `EnvironmentVariablesProvider`.
    public static let defaultKey = "courier.transport.url"

    /// Connects the transport `url` names.
    public static func connect(_ url: TransportURL) async throws -> any Transport {
        switch url {
        case .memory(let settings):
            return try settings.makeTransport()
        case .amqp(let settings):
            return try await RabbitMQTransport.connect(.init(settings: settings))
        case .kafka(let settings):
            return try await KafkaTransport.connect(.init(settings: settings))
        }
    }

    /// Parses `url` (``CourierError/Code/invalidURL`` with the bad part named, the password
    /// redacted) and connects it.
    public static func connect(_ url: String) async throws -> any Transport {
        try await connect(TransportURL(url))
    }

    /// Reads and parses the transport URL at `key` of `config`. The value is read as a secret
    /// (it may hold a password), so access logs redact it.
    /// - Parameters:
    ///   - default: The URL to use when `key` has no value; `nil` (the default) makes a
    ///     missing value an error, so that a service never falls back to an in-memory broker
    ///     by accident.
    /// - Throws: ``CourierError/Code/invalidConfiguration`` when the value is missing,
    ///   ``CourierError/Code/invalidURL`` when it does not parse.
    public static func url(from config: ConfigReader, key: String = defaultKey, default fallback: String? = nil) throws -> TransportURL {
        let configKey = ConfigKey(key)
        guard let text = config.string(forKey: configKey, isSecret: true) ?? fallback else {
            throw CourierError(
                .invalidConfiguration,
                "no transport URL at configuration key \(key) (environment variable \(environmentName(of: key))); set it to memory://, amqp://user:password@host:5672/vhost or kafka://host:9092"
            )
        }
        do {
            return try TransportURL(text)
        } catch {
            throw CourierError(.invalidURL, "configuration key \(key): \(error.message)", underlying: error)
        }
    }

    /// Reads the transport URL at `key` of `config` and connects it.
    public static func connect(config: ConfigReader, key: String = defaultKey, default fallback: String? = nil) async throws
        -> any Transport
    {
        try await connect(url(from: config, key: key, default: fallback))
    }

    /// The environment variable `EnvironmentVariablesProvider` reads for `key`:
    /// `courier.transport.url` → `COURIER_TRANSPORT_URL`.
    public static func environmentName(of key: String) -> String {
        String(key.map { $0 == "." || $0 == "-" ? "_" : $0 }).uppercased()
    }
}

extension MessageBus {
    /// Connects the transport configured at `key` of `config` (the environment variable
    /// `COURIER_TRANSPORT_URL` by default) and creates a bus over it. A missing or bad URL
    /// fails here, at start, with a message naming the key and the bad part.
    public static func connect(
        config: ConfigReader, key: String = Transports.defaultKey, default fallback: String? = nil,
        configuration: MessageBus.Configuration = MessageBus.Configuration()
    ) async throws -> MessageBus {
        MessageBus(transport: try await Transports.connect(config: config, key: key, default: fallback), configuration: configuration)
    }
}
