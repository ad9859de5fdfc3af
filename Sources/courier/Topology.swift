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
    @Option(help: "A queue.") var queue: String?
    @Option(help: "A topic (with --group).") var topic: String?
    @Option(help: "A subscription group (with --topic).") var group: String?

    func validate() throws {
        switch (queue, topic, group) {
        case (.some, nil, nil), (nil, .some, .some): break
        default: throw ValidationError("give --queue QUEUE, or --topic TOPIC with --group GROUP")
        }
    }

    func run() async throws {
        let origin: DeliveryOrigin
        if let queue {
            try DestinationName.validate(queue, as: .queue)
            origin = .queue(queue)
        } else {
            try DestinationName.validate(topic!, as: .topic)
            try DestinationName.validate(group!, as: .group)
            origin = .topic(topic!, group: group!)
        }
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
