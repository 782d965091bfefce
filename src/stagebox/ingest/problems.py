"""What is wrong with a bag: one :class:`Problem` per broken rule, gathered in a :class:`Report`."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class Problem:
    """A rule a bag, or one of its entries, broke.

    ``path`` is the entry or tag file the problem is about, relative to the
    bag's top directory (for a tar entry the reader refused, the name as it
    appears in the tar); ``""`` when it is about the bag as a whole. ``rule``
    says in plain words what is wrong.
    """

    path: str
    rule: str

    def __str__(self) -> str:
        return f"{self.path}: {self.rule}" if self.path else self.rule


@dataclass
class Report:
    """Every error and warning found in one bag, in the order found.

    A bag is valid when it has no errors; warnings never make it invalid.
    ``payload_files`` and ``payload_bytes`` count the files under ``data/``.
    """

    errors: list[Problem] = field(default_factory=list)
    warnings: list[Problem] = field(default_factory=list)
    payload_files: int = 0
    payload_bytes: int = 0

    @property
    def valid(self) -> bool:
        return not self.errors

    def error(self, path: str, rule: str) -> None:
        self.errors.append(Problem(path, rule))

    def warn(self, path: str, rule: str) -> None:
        self.warnings.append(Problem(path, rule))

    def error_lines(self, cap: int = 100) -> list[str]:
        """At most ``cap`` errors as text, then ``"... and N more errors"`` when capped."""
        lines = [str(p) for p in self.errors[:cap]]
        if len(self.errors) > cap:
            lines.append(f"... and {len(self.errors) - cap} more errors")
        return lines
