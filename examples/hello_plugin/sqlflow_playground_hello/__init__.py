"""An example plugin: greets someone ``times`` times, one greeting every ``interval_s``.

It keeps no state at all: ``meta`` holds when the job started, the cursor counts the
greetings already returned, so any replica can answer ``get`` from those two alone.
Installed as its own package, it appears in ``GET /plugins/v1`` through its entry point:

    [sqlflow_playground.plugins]
    hello = sqlflow_playground_hello:HelloPlugin

Try it without a server:

    >>> from sqlflow_playground.plugins import run_local
    >>> run_local(HelloPlugin(), {"name": "Ada", "times": 2}).responses
    [{'message': 'hello, Ada (1/2)'}, {'message': 'hello, Ada (2/2)'}]
"""
import time

from sqlflow_playground.plugins import RUNNING, SUCCEEDED, TaskPlugin, TaskState


class HelloPlugin(TaskPlugin):
    task_type = "hello"
    version = "v1"
    description = "Say hello, slowly (an example of a stateless third-party plugin)."
    spec_schema = {
        "type": "object",
        "required": ["name"],
        "additionalProperties": False,
        "properties": {
            "name": {"type": "string", "minLength": 1, "maxLength": 100},
            "times": {"type": "integer", "minimum": 1, "maximum": 1000},
            "interval_s": {"type": "number", "minimum": 0, "maximum": 60},
        },
    }

    async def create(self, ctx, spec):
        return {"started": time.time(), "name": spec["name"], "times": spec.get("times", 3),
                "interval_s": spec.get("interval_s", 0.1)}

    async def get(self, ctx, meta, cursor):
        done_before = int(cursor or 0)
        elapsed = time.time() - meta["started"]
        interval = meta["interval_s"]
        ready = meta["times"] if interval == 0 else min(meta["times"], int(elapsed / interval))
        finished = ready == meta["times"]
        greetings = [{"message": f"hello, {meta['name']} ({i + 1}/{meta['times']})"}
                     for i in range(done_before, ready)]
        return TaskState(status=SUCCEEDED if finished else RUNNING,
                         message=f"greeted {meta['name']} {ready} time(s)",
                         responses=greetings, cursor=str(ready), more=False,
                         outputs={"greetings": ready} if finished else {})

    async def delete(self, ctx, meta):
        pass  # nothing runs anywhere: there is nothing to stop
