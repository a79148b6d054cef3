"""Delivery: how events arrive and are settled. The worker's consumer (pika), the AMQP helpers, dispatch (ledger,
lease, handler), settle (outcomes, parking, domain.failed), metrics, the Lambda adapter, and main (settings,
adapters and the ports, built once). Never imports ``functions.ops``.
"""
