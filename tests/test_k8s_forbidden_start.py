import time
import pytest
from sqlflow_playground.errors import Unavailable
from test_k8s_rbac import role_rules


@pytest.mark.parametrize("provisioner", ["sqlite", "kubernetes"])
def test_a_403_on_the_first_list_says_forbidden_promptly(sim, make_server, provisioner):
    sim.rbac_rules = [r for r in role_rules() if r["resources"] != ["pods"]] + [
        {"apiGroups": [""], "resources": ["pods"], "verbs": ["get", "create", "delete"]}]
    started = time.monotonic()
    with pytest.raises(Unavailable) as refused:
        make_server(provisioner=provisioner, enable_pod_jobs=True, kubeconfig=sim.kubeconfig,
                    namespace="default")
    message = str(refused.value)
    assert "forbidden" in message and "may not list pods" in message, message
    assert "cannot reach" not in message
    assert time.monotonic() - started < 20
