"""The Broker port, its adapters (RabbitMQ, embedded PostgreSQL queue), the topology and
the consumer runner."""
