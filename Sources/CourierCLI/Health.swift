import ArgumentParser
import Courier
import CourierTransports

/// `courier health`: connects, prints the transport's health, exits 0 when healthy and 1
/// when not — an exec probe for a broker.
struct Health: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Connect to the broker, print each connection's health, and exit 0 if healthy, 1 if not.",
        discussion: """
            A broker that cannot be reached within the URL's connection timeout is unhealthy, \
            with the reason (never the password). Usable as an exec probe; a service reports its \
            own bus with MessageBus.health() (see the README).

            Examples:
              courier health --transport amqp://guest:guest@localhost:5672/
              courier health --transport 'amqp://guest:guest@h1:5672,h2:5672,h3:5672/?connection_timeout=3'
              courier health --transport kafka://localhost:9092
            """
    )

    @OptionGroup var transportOptions: TransportOptions

    func run() async throws {
        let url = try transportOptions.parsedURL()
        let transport: any Transport
        do {
            transport = try await Transports.connect(url)
        } catch let error as CourierError where error.code == .unreachable || error.code == .timeout {
            let system =
                switch url {
                case .memory: "memory"
                case .amqp: "rabbitmq"
                case .kafka: "kafka"
                }
            print("\(system): unhealthy\n  cannot connect: \(error.message)")
            throw ExitCode(1)
        }
        let health = await transport.health()
        try? await transport.shutdown()
        print(health)
        if !health.isHealthy { throw ExitCode(1) }
    }
}
