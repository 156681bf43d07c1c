"""The step load shape, for Locust's -f:
``locust -f loadtests/locustfile.py,loadtests/shape_step.py --config loadtests/SCENARIO.conf``
(Locust runs the one shape class its files hold; see ``loadtests/shapes.py``)."""

from loadtests.shapes import Step

__all__ = ["Step"]
