"""imaged: an image-generation daemon.

Requests arrive on RabbitMQ, provider tasks are driven to completion, images land on disk, state lives in MongoDB,
and completion events go out on a topic exchange.
"""

__version__ = "0.1.0"
