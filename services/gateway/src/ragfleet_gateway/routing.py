"""Routing: which model answers a question first, a cheap one or a strong one.

Policies behind one interface (``Router.choose``), picked by ``GatewaySettings.routing``:

- ``none``: the first model of the chain (no router).
- ``classifier``: a ``RouterModel`` (``ragfleet train router``) scores the question; the strong
  model when its probability of needing it is at least the threshold.
- ``signals``: the strong model when the best dense score of the retrieval is below the
  threshold (little in the corpus resembles the question: the harder questions).
- ``cascade``: the cheap model answers first; ``escalation_reason`` checks its answer (declined,
  no citation, cut short, degenerate) and, when it fails, the strong model answers instead.

A request that names a model is not routed. The chosen model goes first and the rest of the
chain stays its fallback (``FallbackChain.links_to``), so a routed model that is down still falls
back. The choice and its reason are in the answer (``Answer.route``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from ragfleet.router_model import RouterModel
from ragfleet_gateway.domain import RetrievalResult, Route
from ragfleet_gateway.settings import GatewaySettings


class Router(Protocol):
    @property
    def policy(self) -> str: ...

    def choose(self, question: str, retrieval: RetrievalResult) -> Route: ...


@dataclass(frozen=True)
class FirstModel:
    """No router: the chain's first model ("" for the generator's default)."""

    model: str
    policy: str = "none"

    def choose(self, question: str, retrieval: RetrievalResult) -> Route:
        return Route(self.policy, self.model)


@dataclass(frozen=True)
class ClassifierRouter:
    model: RouterModel
    threshold: float
    cheap: str
    strong: str
    policy: str = "classifier"

    def choose(self, question: str, retrieval: RetrievalResult) -> Route:
        p = self.model.p_strong(question)
        strong = p >= self.threshold
        return Route(
            self.policy,
            self.strong if strong else self.cheap,
            f"p(strong) {p:.3f} {'>=' if strong else '<'} threshold {self.threshold:.3f}",
            score=p,
        )


@dataclass(frozen=True)
class SignalRouter:
    threshold: float
    cheap: str
    strong: str
    policy: str = "signals"

    def choose(self, question: str, retrieval: RetrievalResult) -> Route:
        best = retrieval.best_dense_score
        if best is None:
            # A lexical-only search (or a fused one from OpenSearch) carries no absolute score.
            return Route(self.policy, self.cheap, "no dense score to judge by: the cheap model")
        strong = best < self.threshold
        return Route(
            self.policy,
            self.strong if strong else self.cheap,
            f"best dense score {best:.3f} {'<' if strong else '>='} threshold {self.threshold:.3f}",
            score=best,
        )


@dataclass(frozen=True)
class CascadeRouter:
    """The cheap model first; ``Answering`` asks the strong one when ``escalation_reason``
    finds the cheap answer wanting."""

    cheap: str
    strong: str
    policy: str = "cascade"

    def choose(self, question: str, retrieval: RetrievalResult) -> Route:
        return Route(self.policy, self.cheap, "the cheap model first")


def build_router(settings: GatewaySettings) -> Router:
    """The router ``settings.routing`` names. Raises ``InvalidInput`` naming the router model
    file when it cannot be read."""
    cheap, strong = settings.routing_cheap_model, settings.routing_strong_model
    if settings.routing == "classifier":
        assert settings.router_model_file is not None, "checked by GatewaySettings"
        model = RouterModel.load(settings.router_model_file)
        threshold = (
            model.threshold if settings.routing_threshold is None else settings.routing_threshold
        )
        return ClassifierRouter(model, threshold, cheap, strong)
    if settings.routing == "signals":
        assert settings.routing_threshold is not None, "checked by GatewaySettings"
        return SignalRouter(settings.routing_threshold, cheap, strong)
    if settings.routing == "cascade":
        return CascadeRouter(cheap, strong)
    return FirstModel(settings.models[0].name if settings.models else "")
