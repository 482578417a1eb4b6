"""Feed-forward layers: the dense MLP (gated SwiGLU or plain) and the mixture of experts (router,
top-k routing, dispatch, expert GEMMs grouped by token count, combine, shared experts)."""

from __future__ import annotations

from .einsum import Op, Tensor
from .model import ModelSpec
from .opkit import ACT_FLOPS, ROUTE_FLOPS, add, linear, norm
from .routing import Routing, count_groups, local_counts


def mlp_ops(model: ModelSpec, m: int, f: int | None = None, prefix: str = "", out: str = "mlp_out") -> list[Op]:
    """Dense MLP on ``xn2`` (intermediate size ``f``, default the model's); ``prefix`` names its
    ops, tensors and weights apart (shared experts)."""
    d, adt, wdt = model.d_model, model.act_dtype, model.weight_dtype
    f = f or model.d_ff
    act = (model.activation, model.gated_mlp)
    p = prefix
    if model.gated_mlp:
        return [
            linear(f"{p}gate_proj", m, f, d, "xn2", f"{p}w_gate", f"{p}gate", wdt, adt),
            linear(f"{p}up_proj", m, f, d, "xn2", f"{p}w_up", f"{p}up", wdt, adt),
            Op(f"{p}act", "activation", (("m", m), ("f", f)),
               (Tensor(f"{p}gate", ("m", "f"), adt), Tensor(f"{p}up", ("m", "f"), adt)), Tensor(f"{p}act", ("m", "f"), adt),
               ACT_FLOPS[act], {"function": model.activation, "gated": True}),
            *([norm(f"{p}ffn_sub_norm", model, m, f"{p}act", f"{p}act_n", f"{p}ffn_sub_norm", f)] if model.sub_norms else []),
            linear(f"{p}down_proj", m, d, f, f"{p}act_n" if model.sub_norms else f"{p}act", f"{p}w_down", out, wdt, adt),
        ]
    return [
        linear(f"{p}fc1", m, f, d, "xn2", f"{p}w_fc1", f"{p}h", wdt, adt),
        Op(f"{p}act", "activation", (("m", m), ("f", f)), (Tensor(f"{p}h", ("m", "f"), adt),),
           Tensor(f"{p}act", ("m", "f"), adt), ACT_FLOPS[act], {"function": model.activation, "gated": False}),
        linear(f"{p}fc2", m, d, f, f"{p}act", f"{p}w_fc2", out, wdt, adt),
    ]


def moe_ops(model: ModelSpec, m: int, routing: Routing) -> tuple[list[Op], dict[str, int | str]]:
    """Router, routing, dispatch, expert GEMMs grouped by token count, combine, shared experts."""
    d, adt, wdt = model.d_model, model.act_dtype, model.weight_dtype
    E, k, f = model.n_experts, model.experts_per_token, model.expert_ff
    counts, dropped = local_counts(routing, m, E, k, model.capacity_factor)
    local = E // max(routing.ep_ranks, 1)  # experts whose weights this device holds
    route = {"top_k": k, "scoring": model.router_scoring, "norm_topk_prob": model.norm_topk_prob,
             "capacity_factor": model.capacity_factor, "routed_scaling": model.routed_scaling}
    ops = [
        linear("router", m, E, d, "xn2", "w_router", "router_logits", wdt, adt),
        Op("route", "route", (("m", m), ("x", E)), (Tensor("router_logits", ("m", "x"), adt),),
           Tensor("route_weights", ("m", "x"), adt), ROUTE_FLOPS, route),
        Op("dispatch", "gather", (("m", m), ("t", k), ("d", d)), (Tensor("xn2", ("m", "d"), adt),),
           Tensor("x_dispatched", ("m", "t", "d"), adt), 0.0, {}),
    ]
    act = (model.activation, model.gated_mlp)
    for g, (c, n_e) in enumerate(count_groups(counts)):
        grp = {"moe_group": g, "experts_total": local, "tokens_per_expert": c}

        def gemm(name: str, n: int, kk: int, x: str, w: str, out: str, g=g, grp=grp, n_e=n_e, c=c) -> Op:
            return Op(f"{name}.{g}", "matmul", (("x", n_e), ("m", c), ("n", n), ("k", kk)),
                      (Tensor(x, ("x", "m", "k"), adt), Tensor(w, ("x", "n", "k"), wdt, "weight")),
                      Tensor(out, ("x", "m", "n"), adt), 2.0, grp)

        names = ("expert_gate", "expert_up") if model.gated_mlp else ("expert_fc1",)
        for nm in names:
            ops.append(gemm(nm, f, d, f"x_dispatched.{g}", f"experts.w_{nm[7:]}", f"{nm}_out.{g}"))
        ins = tuple(Tensor(f"{nm}_out.{g}", ("x", "m", "f"), adt) for nm in names)
        ops.append(Op(f"expert_act.{g}", "activation", (("x", n_e), ("m", c), ("f", f)), ins,
                      Tensor(f"expert_act.{g}", ("x", "m", "f"), adt), ACT_FLOPS[act],
                      {"function": model.activation, "gated": model.gated_mlp, **grp}))
        down = "expert_down" if model.gated_mlp else "expert_fc2"
        ops.append(gemm(down, d, f, f"expert_act.{g}", f"experts.w_{down[7:]}", f"y_dispatched.{g}"))
    routed_out = "moe_out" if model.n_shared_experts else "mlp_out"
    ops.append(Op("combine", "combine", (("m", m), ("t", k), ("d", d)),
                  (Tensor("y_dispatched", ("m", "t", "d"), adt), Tensor("route_topk", ("m", "t"), adt)),
                  Tensor(routed_out, ("m", "d"), adt), 2.0,
                  {**route, "function": model.activation, "gated": model.gated_mlp,
                   "weights": tuple(f"experts.w_{n}" for n in (("gate", "up", "down") if model.gated_mlp else ("fc1", "fc2")))}))
    if model.n_shared_experts:
        ops += mlp_ops(model, m, model.n_shared_experts * model.shared_ff, "shared_", "shared_out")
        ops.append(add("shared_add", m, d, "moe_out", "shared_out", "mlp_out", adt))
    meta: dict[str, int | str] = {"routing": routing.describe(), "active_experts": int((counts > 0).sum()),
                                  "dropped_assignments": dropped}
    if routing.ep_ranks > 1:
        meta["expert_parallel"] = routing.ep_ranks
    return ops, meta
