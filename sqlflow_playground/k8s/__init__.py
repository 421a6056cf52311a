"""Kubernetes backends' shared parts: names and labels, pure object builders, the client.

Importing this package needs the ``kubernetes`` client; nothing here talks to a cluster
until a ``clients`` function is called.
"""
from .clients import (batch_v1, close_shared_clients, core_v1, create_if_missing,
                      custom_objects, delete_if_present, load_config, shared_api_client)
from .names import (JOB_LABEL, MANAGED_BY, USER_LABEL, dns_label, hashed_name, label_value,
                    managed_labels, managed_selector)
from .objects import (make_batch_job, make_job_pod, make_mysql_pod, make_mysql_secret,
                      make_mysql_service, mysql_data_source, owner_reference,
                      prepare_workload, secret_values, serialize, service_host, with_owner)

__all__ = [
    "JOB_LABEL", "MANAGED_BY", "USER_LABEL",
    "batch_v1", "close_shared_clients", "core_v1", "create_if_missing", "custom_objects",
    "delete_if_present", "dns_label", "hashed_name", "label_value", "load_config",
    "make_batch_job", "make_job_pod", "make_mysql_pod", "make_mysql_secret",
    "make_mysql_service", "managed_labels", "managed_selector", "mysql_data_source",
    "owner_reference", "prepare_workload", "secret_values", "serialize", "service_host",
    "shared_api_client", "with_owner",
]
