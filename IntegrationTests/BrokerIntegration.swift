import Testing

/// Every integration test, one broker after the other: RabbitMQ's reconnect scenario restarts
/// its broker and Kafka's fault tests take mock brokers down; run side by side on a small
/// machine, each would starve the other's timing.
@Suite("Brokers", .serialized)
enum BrokerIntegration {}
