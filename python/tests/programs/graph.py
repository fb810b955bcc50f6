"""A LangGraph graph run by the tests in a process of its own, checkpointed by
SessiondSaver: start, then b and c in parallel, then end; each node adds to ``log``.

    python graph.py SOCKET THREAD RUNS_FILE [--stop-in-c]

``--stop-in-c``: node c waits, once b's write is stored as a pending write, printing
``ready`` (for the test to kill the process with SIGKILL there). Every node execution is
appended to RUNS_FILE. Without it, the run goes to the end (from wherever the thread is)
and prints the final state as JSON.
"""

from __future__ import annotations

import json
import operator
import sys
import time
from typing import Annotated, Any, TypedDict

from langgraph.graph import END, START, StateGraph

from sessiond.langgraph import SessiondSaver


class State(TypedDict):
    log: Annotated[list[str], operator.add]


def main() -> None:
    socket, thread, runs = sys.argv[1], sys.argv[2], sys.argv[3]
    stop_in_c = "--stop-in-c" in sys.argv
    saver = SessiondSaver(socket)
    config: Any = {"configurable": {"thread_id": thread}}

    def ran(node: str) -> None:
        with open(runs, "a") as f:
            f.write(node + "\n")

    def start(state: State) -> dict[str, list[str]]:
        ran("start")
        return {"log": ["start"]}

    def b(state: State) -> dict[str, list[str]]:
        ran("b")
        return {"log": ["b"]}

    def c(state: State) -> dict[str, list[str]]:
        ran("c")
        if stop_in_c:
            # Wait until b's write is durable as a pending write of the current checkpoint.
            while True:
                tup = saver.get_tuple(config)
                if tup is not None and any(
                    w[1:] == ("log", ["b"]) for w in tup.pending_writes or []
                ):
                    break
                time.sleep(0.01)
            print("ready", flush=True)
            time.sleep(600)
        return {"log": ["c"]}

    def end(state: State) -> dict[str, list[str]]:
        ran("end")
        return {"log": ["end"]}

    builder = StateGraph(State)
    for name, fn in [("start", start), ("b", b), ("c", c), ("end", end)]:
        builder.add_node(name, fn)
    builder.add_edge(START, "start")
    builder.add_edge("start", "b")
    builder.add_edge("start", "c")
    builder.add_edge(["b", "c"], "end")
    builder.add_edge("end", END)
    graph = builder.compile(checkpointer=saver)
    resuming = saver.get_tuple(config) is not None
    state = graph.invoke(None if resuming else {"log": []}, config)
    print(json.dumps(state), flush=True)


if __name__ == "__main__":
    main()
