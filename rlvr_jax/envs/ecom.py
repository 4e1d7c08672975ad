"""A procedurally generated e-commerce environment verified by code.

METHODS.md section 8, in the spirit of Ecom-RLVE. `generate(seed, level)`
builds a product catalog and a customer request; the model shops with tools
and the episode is scored by `verify`, a pure function of the request, the
catalog and the cart.

Catalog: products with an id ('P001', ...), a category, the attributes
color, size and brand, an integer price in dollars and a stock count.
Request: a category, `num_attributes` of the attributes with required values,
a quantity (total units) and a budget (largest total price).

Tools (one call per turn, `tools.parse_tool_call`):
  search(category?, color?, size?, brand?, min_price?, max_price?)
      -> a header line {"results": n, "shown": k} and the k <= max_results
         cheapest matches (ties by id) as JSON lines, without stock.
  view_product(id) -> the product's JSON line, with stock.
  add_to_cart(id, qty) -> the cart line; refused past the product's stock.
  remove_from_cart(id) -> the cart line without that product.
  checkout() -> ends the episode (refused while the cart is empty).

Reward channels (`verify`, each in {0, 1}; an empty cart fails every
constraint): 'category' (every cart line is of the category), one per
constrained attribute named by the attribute ('color', 'size', 'brand':
every line has the value), 'budget' (cart total <= budget), 'quantity' (total
units == quantity), 'checked_out', and `base.SUCCESS` = all of them. The
attribute channels exist only for the attributes the request constrains.

Difficulty levels (`LEVEL_TABLE`):

  level | catalog | constrained | max      | distractors | budget slack
        | size    | attributes  | quantity |             |
  ------+---------+-------------+----------+-------------+-------------
    0   |   6     |     0       |    1     |     0       |   2.0
    1   |  10     |     1       |    1     |     2       |   1.5
    2   |  16     |     1       |    2     |     4       |   1.3
    3   |  24     |     2       |    2     |     6       |   1.2
    4   |  40     |     2       |    3     |    10       |   1.1
    5   |  60     |     3       |    3     |    16       |   1.05
    6   | 100     |     3       |    5     |    24       |   1.0

The generator always plants one valid product (every constraint met, stock
>= quantity) and sets budget = floor(slack * its price * quantity), so the
request is satisfiable; at slack 1.0 the planted product exactly exhausts
the budget. Distractors are near misses of the planted product, cycling
through the kinds that apply: one constrained attribute changed, another
category, a price over budget / quantity, and stock below the quantity. The
rest of the catalog is random (and may hold further valid products).
Generation is a pure function of (seed, level) (`random.Random` seeded with
the string 'ecom:<seed>:<level>', which Python hashes deterministically).
"""

import dataclasses
import json
import math
import random
from typing import Any, Mapping

from rlvr_jax.envs import base
from rlvr_jax.envs import tools


@dataclasses.dataclass(frozen=True)
class Level:
  """One row of the difficulty table (module docstring)."""
  catalog_size: int
  num_attributes: int
  max_quantity: int
  num_distractors: int
  budget_slack: float


LEVEL_TABLE = (
    Level(6, 0, 1, 0, 2.0),
    Level(10, 1, 1, 2, 1.5),
    Level(16, 1, 2, 4, 1.3),
    Level(24, 2, 2, 6, 1.2),
    Level(40, 2, 3, 10, 1.1),
    Level(60, 3, 3, 16, 1.05),
    Level(100, 3, 5, 24, 1.0),
)
ATTRIBUTES = ("color", "size", "brand")
_CLOTHES = ("S", "M", "L", "XL")
SIZES = {
    "shirt": _CLOTHES,
    "jacket": _CLOTHES,
    "shoes": ("38", "39", "40", "41", "42", "43", "44", "45"),
    "backpack": ("S", "M", "L"),
    "hat": ("S", "M", "L"),
}
CATEGORIES = tuple(SIZES)
COLORS = ("black", "white", "red", "blue", "green", "gray")
BRANDS = ("Acme", "Nordic", "Peak", "Urban", "Zen")
# Price range in dollars (inclusive) per category.
PRICES = {"shirt": (10, 60), "jacket": (50, 250), "shoes": (40, 150),
          "backpack": (20, 120), "hat": (8, 40)}
EXAMPLE_SEED_OFFSET = 2 * 10**9  # Seeds of `EcomEnv.worked_example`.
CONSTRAINT_CHANNELS = ("category", *ATTRIBUTES, "budget", "quantity")
CHANNELS = (*CONSTRAINT_CHANNELS, "checked_out", base.SUCCESS)

TOOL_SPECS = (
    tools.ToolSpec("search", "products matching all given filters, cheapest "
                   "first", {
                       "category": tools.Param("string", "category", False),
                       "color": tools.Param("string", "color", False),
                       "size": tools.Param("string", "size", False),
                       "brand": tools.Param("string", "brand", False),
                       "min_price": tools.Param("number", "dollars", False),
                       "max_price": tools.Param("number", "dollars", False),
                   }),
    tools.ToolSpec("view_product", "one product with its stock",
                   {"id": tools.Param("string", "product id")}),
    tools.ToolSpec("add_to_cart", "add qty units of a product",
                   {"id": tools.Param("string", "product id"),
                    "qty": tools.Param("integer", "units")}),
    tools.ToolSpec("remove_from_cart", "remove a product from the cart",
                   {"id": tools.Param("string", "product id")}),
    tools.ToolSpec("checkout", "buy the cart and end the conversation"),
)


@dataclasses.dataclass(frozen=True)
class Product:
  """A catalog entry; price in whole dollars."""
  id: str
  category: str
  color: str
  size: str
  brand: str
  price: int
  stock: int

  def to_json(self, *, with_stock: bool = True) -> str:
    """The product as one compact JSON line (fields in declaration order)."""
    fields = dataclasses.asdict(self)
    if not with_stock:
      del fields["stock"]
    return json.dumps(fields, separators=(",", ":"))


@dataclasses.dataclass(frozen=True)
class Request:
  """The customer's constraints.

  Attributes:
    category: the required category.
    attributes: attribute name -> required value, for the constrained ones.
    quantity: total units to buy (>= 1).
    budget: largest total price in dollars.
  """
  category: str
  attributes: Mapping[str, str]
  quantity: int
  budget: int

  def to_json(self) -> str:
    """The request as one compact JSON line."""
    return json.dumps({"category": self.category, **self.attributes,
                       "quantity": self.quantity, "budget": self.budget},
                      separators=(",", ":"))


@dataclasses.dataclass(frozen=True)
class Task:
  """A generated problem: the catalog (by id), the request, the planted id."""
  catalog: Mapping[str, Product]
  request: Request
  planted_id: str


def verify(request: Request, catalog: Mapping[str, Product],
           cart: Mapping[str, int], *, checked_out: bool) -> dict[str, float]:
  """The reward channels of a cart (module docstring), each in {0, 1}.

  Args:
    request: the customer's constraints.
    catalog: product id -> `Product`.
    cart: product id -> units (lines with 0 units are ignored).
    checked_out: whether checkout succeeded.

  Returns:
    {'category', one key per constrained attribute, 'budget', 'quantity',
     'checked_out', 'success'} -> 0.0 or 1.0.

  Raises:
    ValueError: a cart id that is not in `catalog`, or negative units.
  """
  lines = []
  for product_id, qty in cart.items():
    if product_id not in catalog:
      raise ValueError(f"cart holds {product_id!r}, which is not in catalog")
    if qty < 0:
      raise ValueError(f"cart[{product_id!r}] = {qty} units; must be >= 0")
    if qty > 0:
      lines.append((catalog[product_id], qty))
  filled = bool(lines)
  channels = {"category": filled and all(
      p.category == request.category for p, _ in lines)}
  for name, value in request.attributes.items():
    channels[name] = filled and all(getattr(p, name) == value
                                    for p, _ in lines)
  channels["budget"] = filled and sum(
      p.price * q for p, q in lines) <= request.budget
  channels["quantity"] = sum(q for _, q in lines) == request.quantity
  channels["checked_out"] = bool(checked_out)
  channels[base.SUCCESS] = all(channels.values())
  return {k: float(v) for k, v in channels.items()}


def _random_product(rng: random.Random, category: str) -> dict[str, Any]:
  """A random product of `category` (without an id)."""
  low, high = PRICES[category]
  return {"category": category, "color": rng.choice(COLORS),
          "size": rng.choice(SIZES[category]), "brand": rng.choice(BRANDS),
          "price": rng.randint(low, high), "stock": rng.randint(0, 12)}


def _distractor(rng: random.Random, kind: str, planted: dict[str, Any],
                request: Request) -> dict[str, Any]:
  """A near miss of `planted` that fails exactly the constraint of `kind`."""
  product = dict(planted)
  if kind == "attribute":
    name = rng.choice(sorted(request.attributes))
    vocab = {"color": COLORS, "brand": BRANDS,
             "size": SIZES[request.category]}[name]
    product[name] = rng.choice([v for v in vocab if v != planted[name]])
  elif kind == "category":
    others = [c for c in CATEGORIES if c != request.category and (
        "size" not in request.attributes or planted["size"] in SIZES[c])]
    product["category"] = rng.choice(others)
    if "size" not in request.attributes:
      product["size"] = rng.choice(SIZES[product["category"]])
  elif kind == "price":
    product["price"] = request.budget // request.quantity + rng.randint(1, 20)
  else:  # "stock"
    product["stock"] = rng.randint(0, request.quantity - 1)
  return product


def generate(*, seed: int, level: int) -> Task:
  """The catalog and request of (seed, level), a pure function of both.

  Args:
    seed: the problem seed (>= 0).
    level: a row of `LEVEL_TABLE`.

  Returns:
    The `Task`; `verify` of {planted_id: quantity} after checkout is success.

  Raises:
    ValueError: naming `seed` or `level` when out of range.
  """
  if seed < 0:
    raise ValueError(f"seed must be >= 0, got {seed}")
  if not 0 <= level < len(LEVEL_TABLE):
    raise ValueError(f"level must be in [0, {len(LEVEL_TABLE)}), got {level}")
  spec = LEVEL_TABLE[level]
  rng = random.Random(f"ecom:{seed}:{level}")
  category = rng.choice(CATEGORIES)
  planted = _random_product(rng, category)
  quantity = rng.randint(1, spec.max_quantity)
  planted["stock"] = quantity + rng.randint(0, 10)
  constrained = sorted(rng.sample(ATTRIBUTES, spec.num_attributes),
                       key=ATTRIBUTES.index)
  request = Request(
      category=category,
      attributes={name: planted[name] for name in constrained},
      quantity=quantity,
      budget=max(planted["price"] * quantity,
                 math.floor(spec.budget_slack * planted["price"] * quantity)))
  kinds = [k for k in ("attribute", "category", "price", "stock")
           if k != "attribute" or constrained]
  if "size" in constrained and category == "shoes":
    kinds.remove("category")  # no other category has shoe sizes
  rows = [planted]
  rows += [_distractor(rng, kinds[i % len(kinds)], planted, request)
           for i in range(spec.num_distractors)]
  rows += [_random_product(rng, rng.choice(CATEGORIES))
           for _ in range(spec.catalog_size - len(rows))]
  order = list(range(len(rows)))
  rng.shuffle(order)
  catalog, planted_id = {}, ""
  for number, row in enumerate(order, start=1):
    product = Product(id=f"P{number:03d}", **rows[row])
    catalog[product.id] = product
    if row == 0:
      planted_id = product.id
  return Task(catalog=catalog, request=request, planted_id=planted_id)


def _cart_line(catalog: Mapping[str, Product], cart: Mapping[str, int]) -> str:
  """The cart as one JSON line: its lines (id, qty, price) and total."""
  lines = [{"id": i, "qty": q, "price": catalog[i].price}
           for i, q in cart.items()]
  total = sum(catalog[i].price * q for i, q in cart.items())
  return json.dumps({"cart": lines, "total": total}, separators=(",", ":"))


class EcomEnv(base.Environment):
  """The e-commerce environment (module docstring) over `generate`/`verify`.

  Usage:

    env = EcomEnv()
    observation = env.reset(seed=0, level=0)
    result = env.step('<tool_call>{"name": "search", "arguments": '
                      '{"category": "hat"}}</tool_call>')
  """

  name = "ecom"

  def __init__(self, *, max_turns: int = 10, max_results: int = 5,
               max_call_chars: int = 1000):
    """Configures the episode.

    Args:
      max_turns: most model turns per episode.
      max_results: most products listed by one search.
      max_call_chars: longest tool-call block accepted.

    Raises:
      ValueError: naming the argument that is below 1.
    """
    if max_results < 1:
      raise ValueError(f"max_results must be >= 1, got {max_results}")
    super().__init__(max_turns=max_turns, num_levels=len(LEVEL_TABLE))
    self.max_results = max_results
    self.max_call_chars = max_call_chars
    self.task: Task | None = None
    self.cart: dict[str, int] = {}

  def _reset(self, *, seed: int, level: int) -> str:
    self.task = generate(seed=seed, level=level)
    self.cart = {}
    request = self.task.request
    wanted = ", ".join(f"{k} {v}" for k, v in request.attributes.items())
    return "\n".join([
        f"Customer: I want {request.quantity} {request.category}"
        f"{' (' + wanted + ')' if wanted else ''}, total at most "
        f"${request.budget}.",
        f"Request: {request.to_json()}",
        "Find matching products in stock, add exactly the quantity to the "
        "cart within the budget, then checkout.",
        tools.describe_tools(TOOL_SPECS),
    ])

  def worked_example(self, index: int) -> list[tuple[str, str]]:
    """A solved level-0 episode: search, add to cart, checkout.

    The episode is the first seed from `EXAMPLE_SEED_OFFSET + 1000 * index`
    on whose search (category, the constrained attributes and max_price =
    budget // quantity) shows an in-stock match first; it is played on a
    fresh environment with this one's settings, so the observations are the
    environment's own text, and it ends in success. The trainer's seeds
    (0, 1, ...) and the held-out ones (from 10**9) never reach these.

    Args:
      index: which example, 0 <= index < 1000.

    Returns:
      [(first observation, search call), (results, add_to_cart call),
       (cart, checkout call)].

    Raises:
      ValueError: `index` out of range.
    """
    if not 0 <= index < 1000:
      raise ValueError(f"index must be in [0, 1000), got {index}")
    env = EcomEnv(max_turns=3, max_results=self.max_results,
                  max_call_chars=self.max_call_chars)
    for seed in range(EXAMPLE_SEED_OFFSET + 1000 * index,
                      EXAMPLE_SEED_OFFSET + 1000 * (index + 1)):
      observation = env.reset(seed=seed, level=0)
      request = env.task.request
      search = tools.format_tool_call("search", {
          "category": request.category, **request.attributes,
          "max_price": request.budget // request.quantity})
      results = env.step(search).observation
      first = json.loads(results.split("\n")[1])["id"] if "\n" in results else None
      if first is None or env.task.catalog[first].stock < request.quantity:
        continue
      add = tools.format_tool_call("add_to_cart", {"id": first, "qty": request.quantity})
      cart = env.step(add).observation
      checkout = tools.format_tool_call("checkout", {})
      if env.step(checkout).rewards[base.SUCCESS] != 1.0:
        continue
      return [(observation, search), (results, add), (cart, checkout)]
    raise ValueError(f"no solvable example seed for index {index}")

  def _final_rewards(self, *, checked_out: bool = False) -> dict[str, float]:
    return verify(self.task.request, self.task.catalog, self.cart,
                  checked_out=checked_out)

  def _step(self, action: str) -> base.StepResult:
    call = tools.parse_tool_call(action, TOOL_SPECS,
                                 max_call_chars=self.max_call_chars)
    if call is None:
      return base.StepResult("error: no tool call found; call one tool, e.g. "
                             + tools.format_tool_call("search", {}), False)
    if isinstance(call, tools.ToolError):
      return base.StepResult(call.message, False)
    if call.name == "checkout":
      if not self.cart:
        return base.StepResult("error: the cart is empty", False)
      cart = _cart_line(self.task.catalog, self.cart)
      return base.StepResult(f"Order placed: {cart}", True,
                             self._final_rewards(checked_out=True))
    handler = getattr(self, f"_{call.name}")
    return base.StepResult(handler(call.arguments), False)

  def _search(self, filters: Mapping[str, Any]) -> str:
    matches = [p for p in self.task.catalog.values() if all(
        (k == "min_price" and p.price >= v) or
        (k == "max_price" and p.price <= v) or
        (k not in ("min_price", "max_price") and getattr(p, k) == v)
        for k, v in filters.items())]
    matches.sort(key=lambda p: (p.price, p.id))
    shown = matches[:self.max_results]
    header = json.dumps({"results": len(matches), "shown": len(shown)},
                        separators=(",", ":"))
    return "\n".join([header] + [p.to_json(with_stock=False) for p in shown])

  def _view_product(self, args: Mapping[str, Any]) -> str:
    product = self.task.catalog.get(args["id"])
    if product is None:
      return f"error: no product {args['id']!r}"
    return product.to_json()

  def _add_to_cart(self, args: Mapping[str, Any]) -> str:
    pid, qty = args["id"], args["qty"]
    product = self.task.catalog.get(pid)
    if product is None:
      return f"error: no product {pid!r}"
    if qty < 1:
      return f"error: qty must be >= 1, got {qty}"
    in_cart = self.cart.get(pid, 0)
    if in_cart + qty > product.stock:
      return (f"error: only {product.stock} of {pid} in stock "
              f"({in_cart} already in the cart)")
    self.cart[pid] = in_cart + qty
    return _cart_line(self.task.catalog, self.cart)

  def _remove_from_cart(self, args: Mapping[str, Any]) -> str:
    if args["id"] not in self.cart:
      return f"error: {args['id']!r} is not in the cart"
    del self.cart[args["id"]]
    return _cart_line(self.task.catalog, self.cart)
