"""mappers"""
