"""``ReadoutLIF``: Lava's ``LIFReset`` that also sends its membrane ``v`` every step (own
package: Lava imports every module beside a Process to find its models)."""
