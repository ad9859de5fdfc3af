// swift-tools-version: 6.1
import PackageDescription

let strictness: [SwiftSetting] = [
    .enableUpcomingFeature("ExistentialAny")
]

let package = Package(
    name: "Courier",
    platforms: [.macOS(.v15)],
    products: [
        .library(name: "Courier", targets: ["Courier"]),
        .library(name: "CourierBus", targets: ["CourierBus"]),
        .library(name: "CourierOutbox", targets: ["CourierOutbox"]),
        .library(name: "CourierSQLite", targets: ["CourierSQLite"]),
        .library(name: "CourierPostgres", targets: ["CourierPostgres"]),
        .library(name: "CourierConformance", targets: ["CourierConformance"]),
        .library(name: "CourierRabbitMQ", targets: ["CourierRabbitMQ"]),
        .library(name: "CourierKafka", targets: ["CourierKafka"]),
        .library(name: "CourierTransports", targets: ["CourierTransports"]),
        .executable(name: "courier", targets: ["CourierCLI"]),
    ],
    dependencies: [
        .package(url: "https://github.com/apple/swift-collections.git", from: "1.1.0"),
        .package(url: "https://github.com/apple/swift-argument-parser.git", from: "1.5.0"),
        .package(url: "https://github.com/HdrHistogram/hdrhistogram-swift.git", from: "0.1.0"),
        .package(url: "https://github.com/apple/swift-log.git", from: "1.6.0"),
        .package(url: "https://github.com/apple/swift-metrics.git", from: "2.5.0"),
        .package(url: "https://github.com/apple/swift-distributed-tracing.git", from: "1.1.0"),
        .package(url: "https://github.com/swift-server/swift-service-lifecycle.git", from: "2.6.0"),
        .package(url: "https://github.com/apple/swift-configuration.git", from: "1.0.0", traits: [.defaults, "Logging"]),
        .package(url: "https://github.com/groue/GRDB.swift.git", from: "7.10.0"),
        .package(url: "https://github.com/vapor/postgres-nio.git", from: "1.33.0"),
        .package(url: "https://github.com/apple/swift-nio-ssl.git", from: "2.29.0"),
    ],
    targets: [
        .target(
            name: "Courier",
            dependencies: [
                .product(name: "DequeModule", package: "swift-collections"),
                .product(name: "Logging", package: "swift-log"),
            ],
            swiftSettings: strictness
        ),
        .target(
            name: "CourierBus",
            dependencies: [
                "Courier",
                .product(name: "DequeModule", package: "swift-collections"),
                .product(name: "Logging", package: "swift-log"),
                .product(name: "Metrics", package: "swift-metrics"),
                .product(name: "Tracing", package: "swift-distributed-tracing"),
                .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
            ],
            swiftSettings: strictness
        ),
        .target(
            name: "CourierOutbox",
            dependencies: [
                "Courier",
                "CourierBus",
                .product(name: "Logging", package: "swift-log"),
                .product(name: "Metrics", package: "swift-metrics"),
                .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
            ],
            swiftSettings: strictness
        ),
        .target(
            name: "CourierSQLite",
            dependencies: [
                "Courier",
                "CourierBus",
                "CourierOutbox",
                .product(name: "GRDB", package: "GRDB.swift"),
            ],
            path: "Stores/SQLite/CourierSQLite",
            swiftSettings: strictness
        ),
        .target(
            name: "CourierPostgres",
            dependencies: [
                "Courier",
                "CourierBus",
                "CourierOutbox",
                .product(name: "PostgresNIO", package: "postgres-nio"),
                .product(name: "NIOSSL", package: "swift-nio-ssl"),
                .product(name: "Logging", package: "swift-log"),
            ],
            path: "Stores/PostgreSQL/CourierPostgres",
            swiftSettings: strictness
        ),
        .target(
            name: "CourierConformance",
            dependencies: ["Courier", "CourierBus"],
            swiftSettings: strictness
        ),
        .target(
            name: "CRabbitMQ",
            path: "Adapters/RabbitMQ/CRabbitMQ",
            linkerSettings: [.linkedLibrary("rabbitmq")]
        ),
        .target(
            name: "CourierRabbitMQ",
            dependencies: [
                "Courier",
                "CRabbitMQ",
                .product(name: "DequeModule", package: "swift-collections"),
                .product(name: "Logging", package: "swift-log"),
            ],
            path: "Adapters/RabbitMQ/CourierRabbitMQ",
            swiftSettings: strictness
        ),
        .systemLibrary(
            name: "Crdkafka",
            path: "Adapters/Kafka/Crdkafka",
            pkgConfig: "rdkafka",
            providers: [.apt(["librdkafka-dev"])]
        ),
        .target(
            name: "CourierKafka",
            dependencies: [
                "Courier",
                "Crdkafka",
                .product(name: "DequeModule", package: "swift-collections"),
                .product(name: "Logging", package: "swift-log"),
            ],
            path: "Adapters/Kafka/CourierKafka",
            swiftSettings: strictness
        ),
        .target(
            name: "CourierTransports",
            dependencies: [
                "Courier",
                "CourierBus",
                "CourierRabbitMQ",
                "CourierKafka",
                .product(name: "Configuration", package: "swift-configuration"),
            ],
            swiftSettings: strictness
        ),
        // A malloc counter for benchmarks, linked into the courier executable only.
        .target(name: "CAllocationCounter"),
        .executableTarget(
            name: "CourierCLI",
            dependencies: [
                "CAllocationCounter",
                "Courier",
                "CourierBus",
                "CourierRabbitMQ",
                "CourierKafka",
                "CourierTransports",
                "CourierOutbox",
                "CourierSQLite",
                "CourierPostgres",
                .product(name: "GRDB", package: "GRDB.swift"),
                .product(name: "PostgresNIO", package: "postgres-nio"),
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
                .product(name: "Configuration", package: "swift-configuration"),
                .product(name: "Logging", package: "swift-log"),
                .product(name: "Histogram", package: "hdrhistogram-swift"),
            ],
            swiftSettings: strictness
        ),
        .testTarget(
            name: "CourierTests",
            dependencies: [
                "Courier",
                "CourierBus",
                "CourierTransports",
                .product(name: "MetricsTestKit", package: "swift-metrics"),
                .product(name: "InMemoryTracing", package: "swift-distributed-tracing"),
                .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
                .product(name: "Configuration", package: "swift-configuration"),
            ],
            swiftSettings: strictness
        ),
        .testTarget(
            name: "CourierConformanceTests",
            dependencies: [
                "Courier",
                "CourierBus",
                "CourierConformance",
                "CourierStoreConformance",
                "CourierTransports",
                .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
                .product(name: "Configuration", package: "swift-configuration"),
                .product(name: "Logging", package: "swift-log"),
            ],
            swiftSettings: strictness
        ),
        .target(
            name: "CourierStoreConformance",
            dependencies: [
                "Courier", "CourierBus", "CourierConformance", "CourierOutbox", "CourierSQLite", "CourierPostgres",
                .product(name: "GRDB", package: "GRDB.swift"),
                .product(name: "PostgresNIO", package: "postgres-nio"),
                .product(name: "Logging", package: "swift-log"),
            ],
            path: "Tests/StoreConformance",
            swiftSettings: strictness
        ),
        .testTarget(
            name: "CourierStoreTests",
            dependencies: [
                "Courier", "CourierBus", "CourierOutbox", "CourierSQLite",
                .product(name: "GRDB", package: "GRDB.swift"),
                .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
            ],
            swiftSettings: strictness
        ),
        .testTarget(
            name: "CourierRabbitMQTests",
            dependencies: ["Courier", "CourierRabbitMQ"],
            swiftSettings: strictness
        ),
        .testTarget(
            name: "CourierKafkaTests",
            dependencies: ["Courier", "CourierKafka", "Crdkafka"],
            swiftSettings: strictness
        ),
        .testTarget(
            name: "CourierIntegrationTests",
            dependencies: [
                "Courier", "CourierBus", "CourierConformance", "CourierRabbitMQ", "CRabbitMQ", "CourierKafka", "CourierTransports",
                "CourierOutbox", "CourierPostgres", "CourierSQLite", "CourierStoreConformance",
                .product(name: "PostgresNIO", package: "postgres-nio"),
                .product(name: "GRDB", package: "GRDB.swift"),
                .product(name: "Logging", package: "swift-log"),
            ],
            path: "IntegrationTests",
            exclude: ["README.md"],
            swiftSettings: strictness
        ),
    ]
)
