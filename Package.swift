// swift-tools-version: 6.1
import PackageDescription

let strictness: [SwiftSetting] = [
    .enableUpcomingFeature("ExistentialAny"),
]

let package = Package(
    name: "Courier",
    platforms: [.macOS(.v15)],
    products: [
        .library(name: "Courier", targets: ["Courier"]),
        .library(name: "CourierConformance", targets: ["CourierConformance"]),
        .library(name: "CourierRabbitMQ", targets: ["CourierRabbitMQ"]),
        .library(name: "CourierKafka", targets: ["CourierKafka"]),
        .executable(name: "courier", targets: ["courier"]),
    ],
    dependencies: [
        .package(url: "https://github.com/apple/swift-collections.git", from: "1.1.0"),
        .package(url: "https://github.com/apple/swift-argument-parser.git", from: "1.5.0"),
        .package(url: "https://github.com/HdrHistogram/hdrhistogram-swift.git", from: "0.1.0"),
    ],
    targets: [
        .target(
            name: "Courier",
            dependencies: [
                .product(name: "DequeModule", package: "swift-collections"),
            ],
            swiftSettings: strictness
        ),
        .target(
            name: "CourierConformance",
            dependencies: ["Courier"],
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
            ],
            path: "Adapters/Kafka/CourierKafka",
            swiftSettings: strictness
        ),
        .executableTarget(
            name: "courier",
            dependencies: [
                "Courier",
                "CourierRabbitMQ",
                "CourierKafka",
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
                .product(name: "Histogram", package: "hdrhistogram-swift"),
            ],
            swiftSettings: strictness
        ),
        .testTarget(
            name: "CourierTests",
            dependencies: ["Courier"],
            swiftSettings: strictness
        ),
        .testTarget(
            name: "CourierConformanceTests",
            dependencies: ["Courier", "CourierConformance"],
            swiftSettings: strictness
        ),
        .testTarget(
            name: "CourierIntegrationTests",
            dependencies: ["Courier", "CourierConformance", "CourierRabbitMQ", "CourierKafka"],
            path: "IntegrationTests",
            exclude: ["README.md"],
            swiftSettings: strictness
        ),
    ]
)
