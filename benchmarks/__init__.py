"""mailplane benchmarks: a suite separate from the tests, run by one command that prints a table.

    python -m benchmarks [--size small|full]        (or benchmarks/run)

Every run works in a sandbox of its own (harness.Sandbox): a fresh RabbitMQ vhost, its own Mailcow and PMG
simulator processes (with injected latency), its own provider zone and customer zones on the shared BIND, its own
S3 buckets on the shared LocalStack; everything is torn down at the end. Figures that depend on the machine's
speed are reported next to a baseline measured in the same run (naive_baseline.py, the dependencies' capacity).
"""
