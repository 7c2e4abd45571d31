;; Hostile: built against contract 3.0.0 (exports cmkguard:policy/evaluator@3.0.0).
;; A core module with the contract's canonical-ABI exports; the tests wrap it into a
;; component with the `wit/` world embedded (see build.rs, `test_components`).
(module
  (memory (export "memory") 2)
  (global $heap (mut i32) (i32.const 65536))
  ;; "hostile" at 16, the contract version at 32, metadata record at 64, ok result at 96.
  (data (i32.const 16) "hostile")
  (data (i32.const 32) "3.0.0")
  (data (i32.const 64) "\10\00\00\00\07\00\00\00\20\00\00\00\05\00\00\00\20\00\00\00\05\00\00\00")
  (func (export "cabi_realloc") (param i32 i32 i32 i32) (result i32)
    (local $p i32)
    (local.set $p (i32.and (i32.add (global.get $heap) (i32.sub (local.get 2) (i32.const 1)))
                           (i32.sub (i32.const 0) (local.get 2))))
    (global.set $heap (i32.add (local.get $p) (local.get 3)))
    (local.get $p))
  (func (export "cmkguard:policy/evaluator@3.0.0#metadata") (result i32) (i32.const 64))
  (func (export "cmkguard:policy/evaluator@3.0.0#validate-settings") (param i32 i32) (result i32) (i32.const 96))
  (func (export "cmkguard:policy/evaluator@3.0.0#evaluate") (param i32) (result i32)
    (i32.const 96))
)
