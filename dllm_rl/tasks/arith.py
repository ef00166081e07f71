"""A small exact-arithmetic evaluator for Countdown answers (never Python `eval`).

Grammar (recursive descent, exact `Fraction` values):
    expr   := term (("+" | "-") term)*
    term   := factor (("*" | "/") factor)*
    factor := ("+" | "-") factor | NUMBER | "(" expr ")"
NUMBER is a run of ASCII digits; "×", "÷" and "−" are read as "*", "/" and "-"; whitespace is ignored.
There is no exponent, so values stay small. Pathological inputs are refused with `ArithmeticError`
before any work: more than MAX_CHARS characters, brackets or unary signs nested deeper than MAX_DEPTH,
or a number with more than MAX_DIGITS digits. Division by zero and syntax errors raise it too.
"""
from __future__ import annotations

from fractions import Fraction

MAX_CHARS = 1_000
MAX_DEPTH = 32
MAX_DIGITS = 18

_ALIASES = {"×": "*", "÷": "/", "−": "-"}
_OPERATORS = set("+-*/()")
_DIGITS = set("0123456789")


class ExpressionError(ArithmeticError):
    """The text is not an expression this evaluator accepts (or it divides by zero)."""


def tokenize(text: str) -> list[str]:
    """Numbers and single-character operators; raises ExpressionError on anything else."""
    if len(text) > MAX_CHARS:
        raise ExpressionError(f"expression longer than {MAX_CHARS} characters")
    tokens: list[str] = []
    i = 0
    while i < len(text):
        ch = _ALIASES.get(text[i], text[i])
        if ch in _DIGITS:
            j = i
            while j < len(text) and text[j] in _DIGITS:
                j += 1
            if j - i > MAX_DIGITS:
                raise ExpressionError(f"number longer than {MAX_DIGITS} digits")
            tokens.append(text[i:j])
            i = j
        elif ch in _OPERATORS:
            tokens.append(ch)
            i += 1
        elif ch in " \t\n\r":
            i += 1
        else:
            raise ExpressionError(f"unexpected character {ch!r}")
    return tokens


class _Parser:
    def __init__(self, tokens: list[str]):
        self.tokens = tokens
        self.pos = 0
        self.depth = 0

    def peek(self) -> str | None:
        return self.tokens[self.pos] if self.pos < len(self.tokens) else None

    def take(self) -> str:
        token = self.peek()
        if token is None:
            raise ExpressionError("unexpected end of expression")
        self.pos += 1
        return token

    def expr(self) -> Fraction:
        value = self.term()
        while self.peek() in ("+", "-"):
            value = value + self.term() if self.take() == "+" else value - self.term()
        return value

    def term(self) -> Fraction:
        value = self.factor()
        while self.peek() in ("*", "/"):
            if self.take() == "*":
                value *= self.factor()
            else:
                divisor = self.factor()
                if divisor == 0:
                    raise ExpressionError("division by zero")
                value /= divisor
        return value

    def factor(self) -> Fraction:
        self.depth += 1
        if self.depth > MAX_DEPTH:
            raise ExpressionError(f"nested deeper than {MAX_DEPTH}")
        token = self.take()
        if token in ("+", "-"):
            value = self.factor() if token == "+" else -self.factor()
        elif token == "(":
            value = self.expr()
            if self.take() != ")":
                raise ExpressionError("missing ')'")
        elif token[0] in _DIGITS:
            value = Fraction(int(token))
        else:
            raise ExpressionError(f"unexpected {token!r}")
        self.depth -= 1
        return value


def evaluate(text: str) -> Fraction:
    """The exact value of an arithmetic expression; raises ExpressionError (an ArithmeticError)."""
    parser = _Parser(tokenize(text))
    value = parser.expr()
    if parser.peek() is not None:
        raise ExpressionError(f"unexpected {parser.peek()!r}")
    return value


def numbers_in(text: str) -> list[int]:
    """The integer literals of an expression, in order (ASCII digit runs)."""
    return [int(token) for token in tokenize(text) if token[0] in _DIGITS]
