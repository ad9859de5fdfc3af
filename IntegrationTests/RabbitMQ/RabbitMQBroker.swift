import Courier
import CourierRabbitMQ
import Foundation

/// The RabbitMQ the integration tests use: `COURIER_AMQP_URL`, else the local broker that
/// `scripts/rabbitmq start` runs on 127.0.0.1. Tests never skip when it is unreachable: they
/// fail with the reason.
enum RabbitMQBroker {
    static var url: String {
        ProcessInfo.processInfo.environment["COURIER_AMQP_URL"].flatMap { $0.isEmpty ? nil : $0 } ?? "amqp://guest:guest@127.0.0.1:5672/"
    }

    static var settings: AMQPSettings {
        guard case .amqp(let settings) = try! TransportURL(url) else { fatalError("COURIER_AMQP_URL is not an amqp URL") }
        return settings
    }

    static func connect(_ configure: (inout RabbitMQTransport.Configuration) -> Void = { _ in }) async throws -> RabbitMQTransport {
        var configuration = RabbitMQTransport.Configuration(settings: settings)
        configure(&configuration)
        return try await RabbitMQTransport.connect(configuration)
    }

    static var repositoryRoot: URL {
        URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent()
    }

    /// The local broker's TLS files (made by scripts/rabbitmq).
    static var tlsDirectory: String {
        (ProcessInfo.processInfo.environment["COURIER_RABBITMQ_DIR"] ?? "/tmp/courier-rabbitmq") + "/tls"
    }

    /// Restarts the broker with `COURIER_RABBITMQ_RESTART` (a shell command), else
    /// `scripts/rabbitmq restart`.
    static func restart() async throws {
        let command = ProcessInfo.processInfo.environment["COURIER_RABBITMQ_RESTART"] ?? "\(repositoryRoot.path)/scripts/rabbitmq restart"
        try await run(command)
    }

    static func run(_ command: String) async throws {
        let process = Process()
        process.executableURL = URL(fileURLWithPath: "/bin/bash")
        process.arguments = ["-c", command]
        try await withCheckedThrowingContinuation { (continuation: CheckedContinuation<Void, any Error>) in
            process.terminationHandler = { process in
                if process.terminationStatus == 0 {
                    continuation.resume()
                } else {
                    continuation.resume(throwing: CourierError(.unreachable, "`\(command)` exited with \(process.terminationStatus)"))
                }
            }
            do { try process.run() } catch { continuation.resume(throwing: error) }
        }
    }
}
