"""Per-user database backends, chosen by ``--provisioner``."""
from ..blocking import BlockingRunner
from ..config import Config, ConfigError
from .base import Provisioned, Provisioner, safe_name


def make_provisioner(config: Config, runner: BlockingRunner, cluster=None) -> Provisioner:
    """The provisioner the configuration names (``cluster``: a ``k8s.Cluster``)."""
    if config.provisioner == "sqlite":
        from .sqlite import SqliteProvisioner
        return SqliteProvisioner(runner, config.state_dir)
    if config.provisioner == "mysql":
        if not config.mysql_dsn:
            raise ConfigError("--provisioner mysql needs --mysql_dsn")
        from .mysql import MysqlProvisioner
        try:
            return MysqlProvisioner(runner, config.mysql_dsn, config.mysql_public_host,
                                    max_user_connections=config.mysql_max_user_connections,
                                    tenant_host=config.mysql_tenant_host)
        except ValueError as e:
            raise ConfigError(str(e)) from e
    if config.provisioner == "kubernetes":
        from .kubernetes import KubernetesProvisioner
        return KubernetesProvisioner(runner, cluster, config.mysql_image,
                                     config.provision_timeout_s,
                                     pending_grace_s=config.pending_grace_s)
    raise ConfigError(f"unknown provisioner {config.provisioner!r}")


__all__ = ["Provisioned", "Provisioner", "make_provisioner", "safe_name"]
