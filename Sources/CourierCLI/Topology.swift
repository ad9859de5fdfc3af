import ArgumentParser
import Courier
import CourierKafka
import CourierRabbitMQ

/// `courier topology`: what a configuration declares, without connecting.
struct Topology: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Print what reading a topic as a group, or a queue, declares on the broker, without connecting or declaring.",
        discussion: """
            Examples:
              courier topology --topic customers --group audit --transport amqp://localhost
              courier topology --queue create-customer --transport 'kafka://localhost:9092?partitions=12&retry_topics=true'
            """
    )

    @OptionGroup var transportOptions: TransportOptions
    @OptionGroup var originOptions: OriginOptions

    func run() async throws {
        let origin = try originOptions.origin()
        let url = try TransportURL(transportOptions.url)
        print("\(url) — \(origin)")
        let lines: [String]
        switch url {
        case .memory:
            lines = [
                "in-process \(origin.kind) \(origin.destination)" + (origin.group.map { " with group \($0)" } ?? ""),
                "in-process queue \(origin.defaultDeadLetterQueue), on the first dead letter",
            ]
        case .amqp(let settings):
            var topology = RabbitMQTopology()
            topology.queueType = settings.queueType
            lines = topology.declarations(for: origin)
        case .kafka(let settings):
            lines = KafkaTopology().declarations(for: origin, settings: settings)
        }
        for line in lines { print("  " + line) }
    }
}
