"""Tests of the e-commerce environment: verifier, generator, tools, episodes."""

import dataclasses
import json
import os
import subprocess
import sys

import pytest

from rlvr_jax.envs import base
from rlvr_jax.envs import ecom
from rlvr_jax.envs import tools


def _product(pid, category="shirt", color="red", size="M", brand="Acme",
             price=15, stock=9):
  return ecom.Product(pid, category, color, size, brand, price, stock)


CATALOG = {p.id: p for p in [
    _product("A"),                      # satisfies everything
    _product("HAT", category="hat"),    # wrong category
    _product("BLUE", color="blue"),     # wrong color
    _product("L", size="L"),            # wrong size
    _product("ZEN", brand="Zen"),       # wrong brand
    _product("DEAR", price=30),         # 2 x 30 = 60 > 50
    _product("EXACT", price=25),        # 2 x 25 = 50 = budget
]}
REQUEST = ecom.Request(category="shirt",
                       attributes={"color": "red", "size": "M", "brand": "Acme"},
                       quantity=2, budget=50)
ALL_PASS = {"category": 1.0, "color": 1.0, "size": 1.0, "brand": 1.0,
            "budget": 1.0, "quantity": 1.0, "checked_out": 1.0,
            "success": 1.0}


def _expect(**failed):
  """ALL_PASS with the named channels (and success) set to 0."""
  return {**ALL_PASS, **{k: 0.0 for k in failed}, "success": 0.0}


@pytest.mark.parametrize("cart, expected", [
    ({"A": 2}, ALL_PASS),                        # 2 x 15 = 30 <= 50
    ({"EXACT": 2}, ALL_PASS),                    # 2 x 25 = 50 <= 50
    ({"A": 1, "EXACT": 1, "L": 0}, ALL_PASS),    # 15 + 25 = 40; 0 units ignored
    ({"HAT": 2}, _expect(category=1)),
    ({"BLUE": 2}, _expect(color=1)),
    ({"L": 2}, _expect(size=1)),
    ({"ZEN": 2}, _expect(brand=1)),
    ({"DEAR": 2}, _expect(budget=1)),            # 60 > 50
    ({"A": 1}, _expect(quantity=1)),             # 1 unit != 2
    ({"A": 3}, _expect(quantity=1)),             # 3 units, 45 <= 50
    ({"A": 1, "BLUE": 1}, _expect(color=1)),     # every line must be red
    ({"A": 2, "DEAR": 1}, _expect(budget=1, quantity=1)),  # 60 > 50, 3 units
    ({}, _expect(category=1, color=1, size=1, brand=1, budget=1,
                 quantity=1)),
])
def test_verify_by_hand(cart, expected):
  assert ecom.verify(REQUEST, CATALOG, cart, checked_out=True) == expected


def test_verify_without_checkout_and_without_attributes():
  assert ecom.verify(REQUEST, CATALOG, {"A": 2}, checked_out=False) == (
      _expect(checked_out=1))
  plain = dataclasses.replace(REQUEST, attributes={}, quantity=1, budget=14)
  # Only category, budget (15 > 14) and quantity are constraints.
  assert ecom.verify(plain, CATALOG, {"BLUE": 1}, checked_out=True) == {
      "category": 1.0, "budget": 0.0, "quantity": 1.0, "checked_out": 1.0,
      "success": 0.0}
  with pytest.raises(ValueError, match="'NOPE', which is not in catalog"):
    ecom.verify(REQUEST, CATALOG, {"NOPE": 1}, checked_out=True)
  with pytest.raises(ValueError, match="must be >= 0"):
    ecom.verify(REQUEST, CATALOG, {"A": -1}, checked_out=True)


def _satisfies(product, request):
  """Independent check that one product can fill the whole request."""
  return (product.category == request.category and
          all(getattr(product, k) == v for k, v in request.attributes.items())
          and product.price * request.quantity <= request.budget and
          product.stock >= request.quantity)


@pytest.mark.parametrize("level", range(len(ecom.LEVEL_TABLE)))
def test_generator_follows_the_level_table_and_plants_a_solution(level):
  spec = ecom.LEVEL_TABLE[level]
  for seed in range(40):
    task = ecom.generate(seed=seed, level=level)
    request = task.request
    planted = task.catalog[task.planted_id]
    assert len(task.catalog) == spec.catalog_size
    assert sorted(task.catalog) == [f"P{i:03d}" for i in
                                    range(1, spec.catalog_size + 1)]
    assert len(request.attributes) == spec.num_attributes
    assert 1 <= request.quantity <= spec.max_quantity
    assert _satisfies(planted, request)
    assert request.budget >= planted.price * request.quantity
    assert request.budget <= spec.budget_slack * planted.price * (
        request.quantity)
    # Near misses: products equal to the planted one but in one field.
    fields = ("category", "color", "size", "brand", "price", "stock")
    near = [p for p in task.catalog.values() if p.id != planted.id and sum(
        getattr(p, f) != getattr(planted, f) for f in fields) <= 2 and
            not _satisfies(p, request)]
    assert len(near) >= spec.num_distractors
    assert ecom.verify(request, task.catalog,
                       {planted.id: request.quantity},
                       checked_out=True)[base.SUCCESS] == 1.0


def _task_json(seed, level):
  task = ecom.generate(seed=seed, level=level)
  return json.dumps({"catalog": [p.to_json() for p in task.catalog.values()],
                     "request": task.request.to_json(),
                     "planted": task.planted_id})


def test_generation_is_deterministic_across_processes():
  here = [_task_json(s, 4) for s in (0, 7)]
  assert here == [_task_json(s, 4) for s in (0, 7)]
  assert here[0] != here[1]
  assert _task_json(0, 3) != _task_json(0, 4)
  code = ("import json; from tests.test_ecom import _task_json; "
          "print(json.dumps([_task_json(s, 4) for s in (0, 7)]))")
  root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  for hash_seed in ("1", "2"):
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=root, check=True,
        capture_output=True, text=True,
        env={**os.environ, "PYTHONHASHSEED": hash_seed}).stdout
    assert json.loads(out) == here


def _call(name, **arguments):
  return tools.format_tool_call(name, arguments)


def test_scripted_episode_reaches_success():
  env = ecom.EcomEnv(max_turns=8)
  observation = env.reset(seed=1, level=3)
  request = env.task.request
  assert f"Request: {request.to_json()}" in observation
  assert "- add_to_cart(id: string, qty: integer)" in observation
  # Search with every constraint; the cheapest results may be out of stock.
  result = env.step("Let me look. " + _call(
      "search", category=request.category, max_price=request.budget,
      **request.attributes))
  lines = [json.loads(x) for x in result.observation.splitlines()]
  assert not result.done and lines[0]["shown"] == len(lines) - 1
  assert [x["price"] for x in lines[1:]] == sorted(x["price"]
                                                   for x in lines[1:])
  assert all("stock" not in x for x in lines[1:])
  chosen = None
  for line in lines[1:]:
    product = json.loads(env.step(_call("view_product", id=line["id"]))
                         .observation)
    if product["stock"] >= request.quantity and (
        product["price"] * request.quantity <= request.budget):
      chosen = product
      break
  assert chosen is not None
  cart = json.loads(env.step(_call("add_to_cart", id=chosen["id"],
                                   qty=request.quantity)).observation)
  assert cart == {"cart": [{"id": chosen["id"], "qty": request.quantity,
                            "price": chosen["price"]}],
                  "total": chosen["price"] * request.quantity}
  result = env.step(_call("checkout"))
  assert result.done and result.observation.startswith("Order placed: ")
  assert result.rewards == {"category": 1.0, "color": 1.0, "size": 1.0,
                            "budget": 1.0, "quantity": 1.0,
                            "checked_out": 1.0, "success": 1.0}


def test_tool_errors_keep_the_episode_going_then_end_at_max_turns():
  env = ecom.EcomEnv(max_turns=12)
  env.reset(seed=2, level=2)
  planted = env.task.catalog[env.task.planted_id]
  steps = [
      ("no tool here", "error: no tool call found"),
      ("<tool_call>{not json}</tool_call>", "not valid JSON"),
      (_call("buy", id="P001"), "unknown tool 'buy'"),
      (_call("add_to_cart", id="P001", qty="2"), "must be a integer"),
      (_call("view_product", id="x" * 10_000), "at most 1000"),
      (_call("checkout"), "error: the cart is empty"),
      (_call("view_product", id="P999"), "error: no product 'P999'"),
      (_call("add_to_cart", id=planted.id, qty=0), "qty must be >= 1"),
      (_call("add_to_cart", id=planted.id, qty=planted.stock + 1),
       f"error: only {planted.stock} of {planted.id} in stock"),
      (_call("remove_from_cart", id=planted.id), "is not in the cart"),
      (_call("add_to_cart", id=planted.id, qty=1),
       f'{{"cart":[{{"id":"{planted.id}","qty":1'),
  ]
  for turn, (action, needle) in enumerate(steps, start=1):
    result = env.step(action)
    assert needle in result.observation, (turn, result.observation)
    assert not result.done and result.rewards == {}
  # Turn 12 = max_turns: an empty search, then the episode is scored
  # uncheckouted with the cart holding 1 planted unit.
  result = env.step(_call("search", category="sofa"))
  assert result.done
  assert result.observation == ('{"results":0,"shown":0}\nEpisode over: '
                                "max_turns=12 reached.")
  expected = ecom.verify(env.task.request, env.task.catalog,
                         {planted.id: 1}, checked_out=False)
  assert result.rewards == expected and expected["checked_out"] == 0.0
  with pytest.raises(RuntimeError):
    env.step(_call("checkout"))


def test_remove_and_search_filters_by_hand():
  env = ecom.EcomEnv(max_results=2)
  env.reset(seed=0, level=0)
  env.task = ecom.Task(catalog=CATALOG, request=REQUEST, planted_id="A")
  # Red M Acme shirts at most $25: A (15), EXACT (25); A first (cheaper).
  result = env.step(_call("search", category="shirt", color="red", size="M",
                          brand="Acme", max_price=25))
  assert result.observation.splitlines() == [
      '{"results":2,"shown":2}',
      '{"id":"A","category":"shirt","color":"red","size":"M",'
      '"brand":"Acme","price":15}',
      '{"id":"EXACT","category":"shirt","color":"red","size":"M",'
      '"brand":"Acme","price":25}']
  # min_price 25: EXACT (25) and DEAR (30); max_results=2 of 2.
  result = env.step(_call("search", min_price=25))
  assert [json.loads(x).get("id") for x in result.observation.splitlines()
          ] == [None, "EXACT", "DEAR"]
  # Prices 15 (A, BLUE, HAT, L, ZEN): 5 results, 2 shown, ties by id.
  result = env.step(_call("search", max_price=15.5))
  assert [json.loads(x).get("id") for x in result.observation.splitlines()
          ] == [None, "A", "BLUE"]
  env.step(_call("add_to_cart", id="A", qty=1))
  env.step(_call("add_to_cart", id="BLUE", qty=1))
  env.step(_call("add_to_cart", id="A", qty=1))
  result = env.step(_call("remove_from_cart", id="BLUE"))
  assert result.observation == (
      '{"cart":[{"id":"A","qty":2,"price":15}],"total":30}')
  result = env.step(_call("checkout"))
  assert result.done and result.rewards == ALL_PASS


def test_env_arguments():
  with pytest.raises(ValueError, match="max_results must be >= 1"):
    ecom.EcomEnv(max_results=0)
  with pytest.raises(ValueError, match="max_turns must be >= 1"):
    ecom.EcomEnv(max_turns=0)
  with pytest.raises(ValueError, match=r"level must be an int in \[0, 7\)"):
    ecom.EcomEnv().reset(seed=0, level=7)
  with pytest.raises(ValueError, match=r"level must be in \[0, 7\)"):
    ecom.generate(seed=0, level=-1)


def test_worked_example_is_a_solved_episode_replayed_by_the_environment():
  env = ecom.EcomEnv(max_turns=6, max_results=3)
  env.reset(seed=7, level=2)
  before = (env.task, dict(env.cart))
  for index in (0, 1, 5):
    exchanges = env.worked_example(index)
    assert [tools.parse_tool_call(turn, ecom.TOOL_SPECS).name for _, turn in exchanges] == [
        "search", "add_to_cart", "checkout"]
    # Replayed on a fresh environment at its seed, every observation is the
    # environment's own and the last call succeeds.
    seed = next(s for s in range(ecom.EXAMPLE_SEED_OFFSET + 1000 * index,
                                 ecom.EXAMPLE_SEED_OFFSET + 1000 * (index + 1))
                if ecom.EcomEnv(max_results=3).reset(seed=s, level=0) == exchanges[0][0])
    replay = ecom.EcomEnv(max_results=3)
    observation = replay.reset(seed=seed, level=0)
    for (shown, turn), (answer, _) in zip(exchanges, exchanges[1:] + [(None, None)]):
      assert observation == shown
      result = replay.step(turn)
      observation = result.observation
      if answer is not None:
        assert observation == answer and not result.done
    assert result.done and result.rewards["success"] == 1.0
  assert env.worked_example(0) != env.worked_example(1)
  assert (env.task, env.cart) == before  # the running episode is untouched
  with pytest.raises(ValueError, match="index must be in"):
    env.worked_example(1000)
